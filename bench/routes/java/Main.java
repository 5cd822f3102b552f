// Benchmark route: the same logic as bench/kamailio/proxy.cfg, in Java.
// bench/run.py copies this folder and replaces @UAS_URI@ with the sipp uas address.
import babelsip.Request;
import babelsip.Route;

public class Main implements Route {
    private static final String UAS_URI = "@UAS_URI@";

    @Override
    public void onRequest(Request req) {
        if (req.method().equals("INVITE")) {
            req.recordRoute();
        }
        req.relay(UAS_URI);
    }
}
