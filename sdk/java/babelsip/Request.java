package babelsip;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One event of one call as a route sees it: the request's fields, its headers,
 * the per-call variables, the host's services (store, registrar, dialogs), and
 * the verbs.
 *
 * <p>Verbs only <em>record</em> calls; the worker sends them as one decision when
 * the hook returns, and the host validates them against its verb table
 * (host/routes/verbs.py). The checks here are the cheap ones that fail the
 * script at the line that made the mistake: a second decision, a verb in a hook
 * that does not allow it ({@link VerbException}).
 */
public final class Request {
    private static final Map<String, List<String>> ALLOWED = Map.ofEntries(
            Map.entry("reply", List.of("on_request", "on_failure")),
            Map.entry("relay", List.of("on_request", "on_failure")),
            Map.entry("redirect", List.of("on_request", "on_failure")),
            Map.entry("drop", List.of("on_request", "on_reply")),
            Map.entry("set_ruri", List.of("on_request", "on_failure")),
            Map.entry("set_header", List.of("on_request", "on_failure", "on_reply")),
            Map.entry("add_header", List.of("on_request", "on_failure", "on_reply")),
            Map.entry("remove_header", List.of("on_request", "on_failure", "on_reply")),
            Map.entry("record_route", List.of("on_request")),
            Map.entry("authenticate", List.of("on_request")),
            Map.entry("save", List.of("on_request")),
            Map.entry("lookup", List.of("on_request", "on_failure")),
            Map.entry("fix_contact", List.of("on_request", "on_reply")),
            Map.entry("limit_duration", List.of("on_request")),
            Map.entry("add_profile", List.of("on_request")));
    private static final List<String> DECISIONS = List.of("reply", "relay", "redirect", "drop",
                                                          "save", "lookup");

    private final Session session;
    private final Object id;
    private final String hook;
    private final Map<String, Object> ev;
    private final List<Object> verbs = new ArrayList<>(2);
    private String decided;
    private Map<String, Object> vars;
    private byte[] vars0;   // the variables as they came, encoded; set when vars() is first used
    private Store store;

    Request(Session session, Object id, String hook, Map<String, Object> event) {
        this.session = session;
        this.id = id;
        this.hook = hook;
        this.ev = event;
    }

    /** A request outside any worker (for unit tests of a route): the store is unavailable. */
    public static Request forTest(String hook, Map<String, Object> event) {
        return new Request(null, 1L, hook, event);
    }

    // ------------------------------------------------------------ event fields (PROTOCOL.md §6)
    private String str(String key) {
        Object v = ev.get(key);
        return v instanceof String ? (String) v : (v == null ? "" : v.toString());
    }

    private long num(String key) {
        Object v = ev.get(key);
        return v instanceof Number ? ((Number) v).longValue() : 0;
    }

    public String hook() { return hook; }
    public String method() { return str("method"); }
    public String ruri() { return str("ruri"); }
    public String ruriUser() { return str("ruri_user"); }
    public String ruriHost() { return str("ruri_host"); }
    /** The request URI's domain is this server's: a user registered here. */
    public boolean ruriLocal() { return Boolean.TRUE.equals(ev.get("ruri_local")); }
    public String fromUri() { return str("from_uri"); }
    public String fromTag() { return str("from_tag"); }
    public String toUri() { return str("to_uri"); }
    public String toTag() { return str("to_tag"); }
    public String callId() { return str("call_id"); }
    public long cseq() { return num("cseq"); }
    public String sourceIp() { return str("source_ip"); }
    public int sourcePort() { return (int) num("source_port"); }
    public String transport() { return str("transport"); }
    public boolean inDialog() { return Boolean.TRUE.equals(ev.get("in_dialog")); }
    public String body() { return str("body"); }
    /** The username of the request's digest credentials (on_request), or "". */
    public String authUser() { return str("auth_user"); }

    /** The raw event object, for fields this SDK version does not know yet. */
    public Map<String, Object> event() { return ev; }

    /** The first value of a header (name compared case-insensitively), or null. */
    public String header(String name) {
        return firstHeader(ev.get("headers"), name);
    }

    /** Every value of a header, in wire order (empty when absent). */
    public List<String> headers(String name) {
        return allHeaders(ev.get("headers"), name);
    }

    /** Every header as {name, value}, in wire order. */
    public List<String[]> headers() {
        return headerPairs(ev.get("headers"));
    }

    /**
     * The per-call variables, a mutable map: what it holds when the hook returns
     * comes back in later events of the same call. Values are JSON values
     * (integers arrive as Long).
     */
    @SuppressWarnings("unchecked")
    public Map<String, Object> vars() {
        if (vars == null) {
            Object v = ev.get("vars");
            vars = v instanceof Map ? (Map<String, Object>) v : new LinkedHashMap<>();
            vars0 = vars.isEmpty() ? null : Json.toBytes(vars);
        }
        return vars;
    }

    /** The reply of an on_failure / on_reply event (also the hook's second argument), or null. */
    @SuppressWarnings("unchecked")
    public Reply replyInfo() {
        Object r = ev.get("reply");
        return r instanceof Map ? new Reply((Map<String, Object>) r) : null;
    }

    /** The host's key/value store. */
    public Store store() {
        if (store == null) {
            store = new Store(session, id);
        }
        return store;
    }

    /** The registrar's bindings: {@code registrar().lookup(aor)}. */
    public Registrar registrar() {
        return new Registrar(store());
    }

    /** The calls tracked as dialogs: {@code dialog().count(profile, key)}. */
    public Dialog dialog() {
        return new Dialog(store());
    }

    /** A line in the host's log, tagged with this event. */
    public void log(String message) {
        log("info", message);
    }

    public void log(String level, String message) {
        if (session != null) {
            session.log(level, String.valueOf(message), id);
        } else {
            System.err.println(message);
        }
    }

    // ------------------------------------------------------------ verbs
    private void verb(String name, Object... args) {
        if (!ALLOWED.get(name).contains(hook)) {
            throw new VerbException(name + "() is not allowed in " + hook);
        }
        if (DECISIONS.contains(name)) {
            if (decided != null) {
                throw new VerbException(name + "(): this event already has a decision (" + decided + ")");
            }
            decided = name;
        }
        List<Object> call = new ArrayList<>(args.length + 1);
        call.add(name);
        Collections.addAll(call, args);
        verbs.add(call);
    }

    /** Answer with this status (101-699; at least 200 in on_failure). */
    public void reply(int code) {
        verb("reply", code);
    }

    public void reply(int code, String reason) {
        verb("reply", code, reason);
    }

    /** Extra headers in the map's iteration order (use a LinkedHashMap to choose it). */
    public void reply(int code, String reason, Map<String, String> headers) {
        List<Object> pairs = new ArrayList<>(headers.size());
        for (Map.Entry<String, String> h : headers.entrySet()) {
            pairs.add(List.of(h.getKey(), String.valueOf(h.getValue())));
        }
        verb("reply", code, reason, pairs);
    }

    /** Extra headers as name, value, name, value, ... (a name may repeat). */
    public void reply(int code, String reason, String... headerNamesAndValues) {
        if (headerNamesAndValues.length % 2 != 0) {
            throw new VerbException("reply(): headers must come as name, value pairs");
        }
        List<Object> pairs = new ArrayList<>(headerNamesAndValues.length / 2);
        for (int i = 0; i < headerNamesAndValues.length; i += 2) {
            pairs.add(Arrays.asList(headerNamesAndValues[i], headerNamesAndValues[i + 1]));
        }
        verb("reply", code, reason, pairs);
    }

    /** Proxy to the (possibly edited) request URI. */
    public void relay() {
        verb("relay");
    }

    public void relay(String target) {
        verb("relay", target);
    }

    /** Fork to these targets, in parallel. */
    public void relay(List<String> targets) {
        verb("relay", new ArrayList<Object>(targets));
    }

    /**
     * @param mode "parallel" or "serial" (null = parallel)
     * @param timeoutSeconds per branch (null = the core's default)
     */
    public void relay(List<String> targets, String mode, Number timeoutSeconds) {
        verb("relay", targets == null ? null : new ArrayList<Object>(targets), options(mode, timeoutSeconds));
    }

    public void relay(String target, String mode, Number timeoutSeconds) {
        verb("relay", target, options(mode, timeoutSeconds));
    }

    private static Map<String, Object> options(String mode, Number timeout) {
        Map<String, Object> opts = new LinkedHashMap<>();
        if (mode != null) {
            opts.put("mode", mode);
        }
        if (timeout != null) {
            opts.put("timeout", timeout);
        }
        return opts;
    }

    /** 302 with these Contact URIs. */
    public void redirect(String... contacts) {
        verb("redirect", new ArrayList<Object>(Arrays.asList(contacts)));
    }

    public void redirect(List<String> contacts) {
        verb("redirect", new ArrayList<Object>(contacts));
    }

    /** Send nothing: drop the request, or swallow a provisional reply. */
    public void drop() {
        verb("drop");
    }

    public void setRuri(String uri) {
        verb("set_ruri", uri);
    }

    /** Replace every instance of a header with one value. */
    public void setHeader(String name, String value) {
        verb("set_header", name, value);
    }

    public void addHeader(String name, String value) {
        verb("add_header", name, value);
    }

    public void removeHeader(String name) {
        verb("remove_header", name);
    }

    /** Stay in the path of in-dialog requests. */
    public void recordRoute() {
        verb("record_route");
    }

    // ------------------------------------------------------------ services
    // The route decides whether, the core does the RFC work. Options are a map
    // of the names PROTOCOL.md §7 lists (null values are not sent).

    /** Require digest credentials before the decision applies (the core answers the challenge). */
    public void authenticate(String realm) {
        verb("authenticate", realm);
    }

    /**
     * @param opts password or ha1 (of {@link #authUser()}), or credentials (a file
     *     beside the routes); algorithms (a List, default MD5); identity (Boolean)
     */
    public void authenticate(String realm, Map<String, ?> opts) {
        verb("authenticate", realm, options(opts));
    }

    /** Registrar: apply this REGISTER's bindings and answer it. */
    public void save() {
        verb("save");
    }

    /** @param opts aor, min_expires, max_expires, default_expires, max_contacts */
    public void save(Map<String, ?> opts) {
        verb("save", options(opts));
    }

    /** Relay to the registered bindings of the request URI's address-of-record (404 without any). */
    public void lookup() {
        verb("lookup");
    }

    /** @param opts aor; code and reason when it has none; timeout seconds per branch */
    public void lookup(Map<String, ?> opts) {
        verb("lookup", options(opts));
    }

    /** A UA behind a NAT: rewrite its Contact to where the message came from. */
    public void fixContact() {
        verb("fix_contact");
    }

    /** End the call (BYE both ways) after this many seconds. */
    public void limitDuration(double seconds) {
        verb("limit_duration", seconds);
    }

    /** Count the call in a profile while it lasts (see {@link Dialog#count}). */
    public void addProfile(String name) {
        verb("add_profile", name);
    }

    public void addProfile(String name, String key) {
        verb("add_profile", name, key);
    }

    private static Map<String, Object> options(Map<String, ?> opts) {
        Map<String, Object> out = new LinkedHashMap<>();
        if (opts != null) {
            for (Map.Entry<String, ?> e : opts.entrySet()) {
                if (e.getValue() != null) {
                    out.put(e.getKey(), e.getValue());
                }
            }
        }
        return out;
    }

    // ------------------------------------------------------------ for the session
    /** The recorded verbs, as the wire lists [name, args...]. */
    public List<Object> verbs() {
        return Collections.unmodifiableList(verbs);
    }

    /** The decision message for this event. */
    public Map<String, Object> decisionMessage() {
        Map<String, Object> msg = new LinkedHashMap<>(6);
        msg.put("type", "decision");
        msg.put("id", id);
        msg.put("verbs", verbs);
        if (vars != null) {
            byte[] now = vars.isEmpty() ? null : Json.toBytes(vars);
            if (!Arrays.equals(now, vars0)) {
                msg.put("vars", vars);
            }
        }
        return msg;
    }

    @Override
    public String toString() {
        return "<Request " + method() + " " + ruri() + ">";
    }

    // ------------------------------------------------------------ header helpers
    static String firstHeader(Object headers, String name) {
        if (headers instanceof List) {
            for (Object h : (List<?>) headers) {
                if (h instanceof List && ((List<?>) h).size() >= 2
                        && name.equalsIgnoreCase(String.valueOf(((List<?>) h).get(0)))) {
                    return String.valueOf(((List<?>) h).get(1));
                }
            }
        }
        return null;
    }

    static List<String> allHeaders(Object headers, String name) {
        List<String> out = new ArrayList<>();
        if (headers instanceof List) {
            for (Object h : (List<?>) headers) {
                if (h instanceof List && ((List<?>) h).size() >= 2
                        && name.equalsIgnoreCase(String.valueOf(((List<?>) h).get(0)))) {
                    out.add(String.valueOf(((List<?>) h).get(1)));
                }
            }
        }
        return out;
    }

    static List<String[]> headerPairs(Object headers) {
        List<String[]> out = new ArrayList<>();
        if (headers instanceof List) {
            for (Object h : (List<?>) headers) {
                if (h instanceof List && ((List<?>) h).size() >= 2) {
                    out.add(new String[] {String.valueOf(((List<?>) h).get(0)),
                                          String.valueOf(((List<?>) h).get(1))});
                }
            }
        }
        return out;
    }
}
