// Conformance route "broken": compiles, but fails to load (its constructor
// throws, as a route whose database is missing would). A route that does not
// compile never reaches the SDK: the host reports javac's error itself.

import babelsip.Request;
import babelsip.Route;

public class Broken implements Route {
    private final String table;

    public Broken() {
        throw new IllegalStateException("cannot open the routing table");
    }

    @Override
    public void onRequest(Request req) {
        req.reply(200, table);
    }
}
