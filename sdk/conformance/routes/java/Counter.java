// Conformance route "counter": host key/value calls inside an event.

import babelsip.Request;
import babelsip.Route;
import babelsip.Store;

public class Counter implements Route {
    @Override
    public void onRequest(Request req) {
        Store store = req.store();
        if (req.ruriUser().equals("err")) {
            store.get("forbidden");  // the transcript answers with an error
            req.reply(500, "unreachable");
            return;
        }
        long n = store.incr("calls", 1);
        Object last = store.get("last");
        store.set("last", req.ruriUser(), 60);
        req.reply(200, "n=" + n + " last=" + (last == null ? "" : last));
    }
}
