package babelsip;

import java.util.Arrays;

/**
 * The host's key/value store with TTL (sdk/PROTOCOL.md §5): this route's own
 * keys (the host puts them under the route's name) unless routes.toml gives
 * the route shared_store = true. Each call is a round trip to the host; it
 * blocks this handler only, the worker keeps answering pings meanwhile.
 * A refused call throws {@link StoreException}.
 */
public final class Store {
    private final Session session;
    private final Object event;

    Store(Session session, Object event) {
        this.session = session;
        this.event = event;
    }

    /** The stored value (String, Long, Double, Boolean, Map, List) or null. */
    public Object get(String key) {
        return call("kv.get", key);
    }

    public void set(String key, Object value) {
        call("kv.set", key, value);
    }

    /** @param ttlSeconds seconds until the key expires; null = never */
    public void set(String key, Object value, Number ttlSeconds) {
        call("kv.set", key, value, ttlSeconds);
    }

    /** @return true if the key existed */
    public boolean delete(String key) {
        return Boolean.TRUE.equals(call("kv.delete", key));
    }

    public long incr(String key) {
        return incr(key, 1, null);
    }

    public long incr(String key, long delta) {
        return incr(key, delta, null);
    }

    /** Adds {@code delta}; an absent key counts as 0 and gets the ttl (rate-counter idiom). */
    public long incr(String key, long delta, Number ttlSeconds) {
        Object v = call("kv.incr", key, delta, ttlSeconds);
        if (!(v instanceof Number)) {
            throw new StoreException("kv.incr: the host answered " + v);
        }
        return ((Number) v).longValue();
    }

    /** Any host call by name, e.g. {@code call("registrar.lookup", aor)}. */
    public Object call(String op, Object... args) {
        if (session == null) {
            throw new StoreException(op + ": the worker is not connected to a host");
        }
        return session.call(op, Arrays.asList(args), event);
    }
}
