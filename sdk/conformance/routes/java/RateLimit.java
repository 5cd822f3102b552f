// Conformance route "ratelimit": calls per caller counted in the host's store.
// The same route exists for every SDK (routes/<sdk>/ratelimit.*);
// tests/sdk/test_store_conformance.py drives each through its runtime.

import babelsip.Request;
import babelsip.Route;
import babelsip.StoreException;

public class RateLimit implements Route {
    private static final long LIMIT = 3;

    @Override
    public void onRequest(Request req) {
        long n;
        try {
            n = req.store().incr("rate:" + req.fromUri(), 1, 60);
        } catch (StoreException e) {
            req.reply(503, "Store unavailable");
            return;
        }
        if (n > LIMIT) {
            req.reply(403, "Over limit");
            return;
        }
        req.reply(200, "n=" + n);
    }
}
