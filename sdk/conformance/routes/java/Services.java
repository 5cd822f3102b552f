// Conformance route "services": the service verbs and host calls (see ../README.md).

import babelsip.Reply;
import babelsip.Request;
import babelsip.Route;
import java.util.List;
import java.util.Map;

public class Services implements Route {
    @Override
    public void onRequest(Request req) {
        if (req.method().equals("REGISTER")) {
            req.authenticate("example.com", Map.of("password", "secret"));
            req.save(Map.of("max_expires", 3600));
            return;
        }
        switch (req.ruriUser()) {
            case "local":
                req.lookup();
                break;
            case "away":
                req.lookup(Map.of("code", 480, "reason", "Temporarily Unavailable", "timeout", 20));
                break;
            case "nat":
                req.fixContact();
                req.relay();
                break;
            case "cap":
                if (req.dialog().count("caller", req.fromUri()) >= 2) {
                    req.reply(486, "Too many calls");
                    break;
                }
                req.addProfile("caller", req.fromUri());
                req.limitDuration(3600);
                req.relay();
                break;
            case "where": {
                List<Map<String, Object>> found = req.registrar().lookup("sip:bob@example.com");
                req.reply(200, "n=" + found.size() + " first="
                        + (found.isEmpty() ? "" : found.get(0).get("contact")));
                break;
            }
            case "who":
                req.reply(200, "user=" + req.authUser());
                break;
            case "strict":
                req.authenticate("example.com", Map.of("ha1", "5f4dcc3b5aa765d61d8327deb882cf99",
                        "algorithms", List.of("SHA-256", "MD5"), "identity", false));
                req.addProfile("all");
                req.relay();
                break;
            default:
                break;
        }
    }

    @Override
    public void onReply(Request req, Reply reply) {
        req.fixContact();
    }
}
