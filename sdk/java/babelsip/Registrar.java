package babelsip;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The registrar's location service, read-only ({@code req.registrar()}). Each
 * call is a round trip to the host, like the store's; a refused call throws
 * {@link StoreException}.
 */
public final class Registrar {
    private final Store calls;

    Registrar(Store calls) {
        this.calls = calls;
    }

    /**
     * The live bindings of an address-of-record (a sip: URI), best q first: maps
     * with contact, expires (seconds left, Long), q (Double), received,
     * transport, path (List), user_agent, instance, reg_id.
     */
    @SuppressWarnings("unchecked")
    public List<Map<String, Object>> lookup(String aor) {
        Object v = calls.call("registrar.lookup", aor);
        if (!(v instanceof List)) {
            throw new StoreException("registrar.lookup: the host answered " + v);
        }
        List<Map<String, Object>> out = new ArrayList<>();
        for (Object b : (List<?>) v) {
            if (b instanceof Map) {
                out.add((Map<String, Object>) b);
            }
        }
        return out;
    }
}
