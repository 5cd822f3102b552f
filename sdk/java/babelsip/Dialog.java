package babelsip;

/**
 * The calls tracked as dialogs ({@code req.dialog()}): {@link Request#addProfile}
 * counts a call in a profile while it lasts, {@link #count} reads the count.
 * A refused call throws {@link StoreException}.
 */
public final class Dialog {
    private final Store calls;

    Dialog(Store calls) {
        this.calls = calls;
    }

    /** How many calls are active in a profile (counted without a key). */
    public long count(String profile) {
        return number(calls.call("dialog.count", profile));
    }

    /** How many calls are active in a profile under this key (e.g. the caller's URI). */
    public long count(String profile, String key) {
        return number(calls.call("dialog.count", profile, key));
    }

    private static long number(Object v) {
        if (!(v instanceof Number)) {
            throw new StoreException("dialog.count: the host answered " + v);
        }
        return ((Number) v).longValue();
    }
}
