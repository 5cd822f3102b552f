// Conformance route "basic": behaviour chosen by the request-URI user part.
// Every SDK's version of this route must behave identically (see ../README.md).

import babelsip.Request;
import babelsip.Route;
import java.util.List;
import java.util.Map;

public class Basic implements Route {
    @Override
    public void onRequest(Request req) {
        switch (req.ruriUser()) {
            case "reply":
                req.reply(486, "Busy Here");
                break;
            case "relay":
                req.recordRoute();
                req.relay(List.of("sip:a@b.example", "sip:c@d.example"), "serial", 5);
                break;
            case "relay1":
                req.relay("sip:one@b.example");
                break;
            case "redirect":
                req.redirect(List.of("sip:x@y.example"));
                break;
            case "drop":
                req.drop();
                break;
            case "edit":
                req.setRuri("sip:new@host.example");
                req.setHeader("X-A", "1");
                req.addHeader("X-B", "2");
                req.removeHeader("X-C");
                break;
            case "hdr": {
                String echo = req.header("X-In");
                req.reply(200, "OK", "X-Echo", echo != null ? echo : "none",
                          "X-Count", String.valueOf(req.headers("x-multi").size()));
                break;
            }
            case "info":
                req.reply(200, String.join("|", req.method(), req.ruri(), req.ruriHost(),
                        req.fromUri(), req.fromTag(), req.toUri(), req.callId(),
                        String.valueOf(req.cseq()), req.sourceIp(), String.valueOf(req.sourcePort()),
                        req.transport(), req.inDialog() ? "yes" : "no", req.body()));
                break;
            case "vars": {
                Map<String, Object> vars = req.vars();
                Object count = vars.get("count");
                vars.put("count", (count instanceof Number ? ((Number) count).longValue() : 0) + 1);
                req.relay();
                break;
            }
            case "boom":
                throw new IllegalStateException("boom");
            default:
                break;  // any other user: no verbs at all (the route "just returns")
        }
    }
}
