package babelsip;

/**
 * A babelsip route written in Java: a class implementing this interface, in a
 * file named after the route ({@code Main.java}, class {@code Main}, is the route
 * {@code main}). It needs a no-argument constructor; the runner makes one
 * instance per worker process.
 *
 * <p>Hooks (sdk/PROTOCOL.md): {@link #onRequest} is required; override
 * {@link #onFailure} or {@link #onReply} to be called for them too (the host
 * only sends the hooks a route overrides). A hook answers by calling verbs on
 * the request ({@code req.reply(486, "Busy Here")}, {@code req.relay(target)}, ...);
 * returning without a decision means the core's default (relay to the request
 * URI, forward the best failure, forward the reply). An exception fails that
 * event only: it gets the route's fallback answer and the worker keeps serving.
 */
public interface Route {
    /** An initial (out-of-dialog) request. */
    void onRequest(Request req) throws Exception;

    /** Every branch failed or timed out: try another target or answer. */
    default void onFailure(Request req, Reply reply) throws Exception {
    }

    /** A provisional or final reply on its way upstream: edit headers or drop it. */
    default void onReply(Request req, Reply reply) throws Exception {
    }

    /**
     * Handlers run on this many threads per worker. 1 (the default) runs events
     * one after another; a route whose handlers wait on databases or the network
     * returns more, and must then be thread-safe.
     */
    default int concurrency() {
        return 1;
    }
}
