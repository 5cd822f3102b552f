// Conformance route "allhooks": onRequest, onFailure and onReply.

import babelsip.Reply;
import babelsip.Request;
import babelsip.Route;

public class AllHooks implements Route {
    @Override
    public void onRequest(Request req) {
        req.relay("sip:first@b.example");
    }

    @Override
    public void onFailure(Request req, Reply reply) {
        if (reply.code() == 486) {
            req.relay("sip:voicemail@b.example");
        } else {
            req.reply(reply.code(), "Failed: " + reply.reason());
        }
    }

    @Override
    public void onReply(Request req, Reply reply) {
        req.setHeader("X-Seen", String.valueOf(reply.code()));
        if ("yes".equals(reply.header("X-Drop"))) {
            req.drop();
        }
    }
}
