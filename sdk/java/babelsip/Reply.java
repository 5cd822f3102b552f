package babelsip;

import java.util.List;
import java.util.Map;

/** The reply an {@code onFailure} / {@code onReply} hook is about. */
public final class Reply {
    private final Map<String, Object> data;

    Reply(Map<String, Object> data) {
        this.data = data;
    }

    public int code() {
        Object c = data.get("code");
        return c instanceof Number ? ((Number) c).intValue() : 0;
    }

    public String reason() {
        Object r = data.get("reason");
        return r instanceof String ? (String) r : "";
    }

    /** The first value of a header (name compared case-insensitively), or null. */
    public String header(String name) {
        return Request.firstHeader(data.get("headers"), name);
    }

    /** Every value of a header, in wire order. */
    public List<String> headers(String name) {
        return Request.allHeaders(data.get("headers"), name);
    }

    /** Every header as {name, value}, in wire order. */
    public List<String[]> headers() {
        return Request.headerPairs(data.get("headers"));
    }

    @Override
    public String toString() {
        return "<Reply " + code() + " " + reason() + ">";
    }
}
