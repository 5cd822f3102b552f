package babelsip;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * The worker side of one protocol connection (sdk/PROTOCOL.md).
 *
 * <p>Threads: the thread calling {@link #run} only reads. It answers pings at
 * once, hands results to the handler waiting for them, and queues events for
 * {@code route.concurrency()} handler threads (one by default: events run one
 * after another, in arrival order). A handler flushes the answers it buffered
 * when the queue runs empty, so a busy worker writes one batch per wake-up
 * rather than one write per event. No thread is created per event.
 *
 * <p>Because pings are answered by the reader, a handler stuck in a loop
 * would look alive forever. So the reader stops answering pings once a
 * handler has been busy for longer than {@code stuck_after} seconds (a route
 * option; default 4 x the event deadline, at least 2 s): the host then sees
 * missed pings and restarts the worker (§8).
 */
public final class Session {
    public static final int PROTOCOL_VERSION = 1;
    public static final String SDK_NAME = "babelsip-java/0.1.0";
    private static final int READ_SIZE = 1 << 16;
    private static final Object STOP = new Object();

    static volatile Session current;  // for Log

    private final Route route;
    private final String routeFile;   // "Main.java": how stack frames of the route are recognised
    private final InputStream in;
    private final OutputStream out;
    private final List<String> hooks;
    private final int threads;

    private final Object outLock = new Object();
    private byte[] outBuf = new byte[1 << 16];
    private int outLen;

    private final LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<>();
    private final ConcurrentHashMap<Long, CompletableFuture<Map<String, Object>>> calls =
            new ConcurrentHashMap<>();
    private final AtomicLong nextCall = new AtomicLong();
    private final AtomicLongArray busySince;  // per handler thread, System.nanoTime(); 0 = idle
    private volatile boolean ended;           // end of input: calls fail at once
    private long stuckAfterNanos = 4_000_000_000L;
    private boolean stuckReported;
    private Map<String, Object> settings = Map.of();

    public Session(Route route, String routeFile, InputStream in, OutputStream out) {
        this.route = route;
        this.routeFile = routeFile;
        this.in = in;
        this.out = out;
        this.hooks = hooksOf(route.getClass());
        this.threads = Math.max(1, route.concurrency());
        this.busySince = new AtomicLongArray(threads);
    }

    /** The hooks a route class implements: onRequest, plus the defaults it overrides. */
    static List<String> hooksOf(Class<?> cls) {
        List<String> out = new ArrayList<>(List.of("on_request"));
        try {
            if (cls.getMethod("onFailure", Request.class, Reply.class).getDeclaringClass() != Route.class) {
                out.add("on_failure");
            }
            if (cls.getMethod("onReply", Request.class, Reply.class).getDeclaringClass() != Route.class) {
                out.add("on_reply");
            }
        } catch (NoSuchMethodException e) {
            throw new AssertionError(e);  // Route declares both
        }
        return out;
    }

    /** The hello settings (route options plus the host's limits). */
    public Map<String, Object> settings() {
        return settings;
    }

    // ------------------------------------------------------------ output
    void send(Map<String, Object> msg) {
        byte[] line;
        try {
            line = Json.toBytes(msg);
        } catch (Json.JsonException e) {
            if (!"decision".equals(msg.get("type"))) {
                throw e;
            }
            Map<String, Object> err = new LinkedHashMap<>();
            err.put("type", "error");
            err.put("id", msg.get("id"));
            err.put("message", "decision is not JSON-encodable: " + e.getMessage());
            line = Json.toBytes(err);
        }
        synchronized (outLock) {
            if (outLen + line.length + 1 > outBuf.length) {
                outBuf = Arrays.copyOf(outBuf, Math.max(outBuf.length * 2, outLen + line.length + 1));
            }
            System.arraycopy(line, 0, outBuf, outLen, line.length);
            outLen += line.length;
            outBuf[outLen++] = '\n';
        }
    }

    void flush() {
        synchronized (outLock) {
            if (outLen == 0) {
                return;
            }
            try {
                out.write(outBuf, 0, outLen);
                out.flush();
            } catch (IOException e) {
                // The host is gone; nothing can be answered any more.
                System.err.println("babelsip: cannot write to the host: " + e.getMessage());
                Runtime.getRuntime().halt(1);
            } finally {
                outLen = 0;
            }
        }
    }

    void log(String level, String message, Object event) {
        Map<String, Object> msg = new LinkedHashMap<>();
        msg.put("type", "log");
        msg.put("level", level);
        msg.put("message", message);
        if (event != null) {
            msg.put("event", event);
        }
        send(msg);
        if (!Thread.currentThread().getName().startsWith("route-")) {
            flush();  // outside a handler nobody else would flush it soon
        }
    }

    // ------------------------------------------------------------ run
    /** Serves until shutdown or end of input; returns the exit status. */
    public int run() throws IOException {
        current = this;
        byte[] buf = new byte[READ_SIZE];
        int len = 0;
        boolean helloSeen = false;
        Thread[] workers = null;
        boolean stopping = false;
        while (true) {
            if (len == buf.length) {
                buf = Arrays.copyOf(buf, buf.length * 2);  // a line longer than the buffer
            }
            int n = in.read(buf, len, buf.length - len);
            if (n < 0) {
                break;
            }
            len += n;
            int start = 0;
            boolean wrote = false;
            for (int i = len - n; i < len; i++) {
                if (buf[i] != '\n') {
                    continue;
                }
                int end = i > start && buf[i - 1] == '\r' ? i - 1 : i;
                Map<String, Object> msg = parseLine(buf, start, end);
                start = i + 1;
                if (msg == null) {
                    continue;
                }
                String type = String.valueOf(msg.get("type"));
                if (!helloSeen) {
                    helloSeen = true;
                    if (!hello(msg)) {
                        return 2;
                    }
                    workers = startWorkers();
                    continue;
                }
                switch (type) {
                    case "event":
                        if (!stopping) {   // no events follow a shutdown (§3)
                            queue.add(msg);
                        }
                        break;
                    case "ping":
                        if (!stuck()) {
                            Map<String, Object> pong = new LinkedHashMap<>();
                            pong.put("type", "pong");
                            pong.put("id", msg.get("id"));
                            send(pong);
                            wrote = true;
                        }
                        break;
                    case "result":
                        CompletableFuture<Map<String, Object>> f = calls.remove(msg.get("id"));
                        if (f != null) {
                            f.complete(msg);
                        }
                        break;
                    case "shutdown":
                        if (!stopping) {
                            stopping = true;
                            // Answer what was received, then exit; keep reading
                            // meanwhile, so store calls of those events still work.
                            Thread[] ws = workers;
                            Thread closer = new Thread(() -> {
                                finish(ws);
                                System.exit(0);
                            }, "closer");
                            closer.setDaemon(true);
                            closer.start();
                        }
                        break;
                    default:
                        break;  // unknown types are ignored (§3)
                }
            }
            if (start > 0) {
                System.arraycopy(buf, start, buf, 0, len - start);
                len -= start;
            }
            if (wrote) {
                flush();
            }
        }
        // End of input: nothing more will arrive, so pending calls can never finish.
        ended = true;
        for (CompletableFuture<Map<String, Object>> f : calls.values()) {
            f.completeExceptionally(new StoreException("the host closed the connection"));
        }
        finish(workers);
        return 0;
    }

    private Map<String, Object> parseLine(byte[] buf, int start, int end) {
        int s = start;
        while (s < end && (buf[s] == ' ' || buf[s] == '\t')) {
            s++;
        }
        if (s == end) {
            return null;  // empty lines are ignored (§1)
        }
        try {
            Object v = Json.parse(buf, s, end - s);
            if (v instanceof Map) {
                @SuppressWarnings("unchecked")
                Map<String, Object> m = (Map<String, Object>) v;
                return m;
            }
        } catch (Json.JsonException e) {
            // fall through
        }
        System.err.println("babelsip: ignoring a line that is not a JSON object: "
                + new String(buf, s, Math.min(80, end - s), StandardCharsets.UTF_8));
        return null;
    }

    @SuppressWarnings("unchecked")
    private boolean hello(Map<String, Object> msg) {
        Object protocol = msg.get("protocol");
        if (!"hello".equals(msg.get("type")) || !(protocol instanceof Long)
                || (Long) protocol != PROTOCOL_VERSION) {
            Map<String, Object> fatal = new LinkedHashMap<>();
            fatal.put("type", "fatal");
            fatal.put("message", "expected hello for protocol " + PROTOCOL_VERSION);
            send(fatal);
            flush();
            return false;
        }
        if (msg.get("settings") instanceof Map) {
            settings = (Map<String, Object>) msg.get("settings");
        }
        double deadline = number(settings.get("deadline"), 1.0);
        double stuck = number(settings.get("stuck_after"), Math.max(2.0, 4 * deadline));
        stuckAfterNanos = (long) (stuck * 1e9);
        Map<String, Object> ready = new LinkedHashMap<>();
        ready.put("type", "ready");
        ready.put("protocol", PROTOCOL_VERSION);
        ready.put("sdk", SDK_NAME);
        ready.put("hooks", hooks);
        send(ready);
        flush();
        return true;
    }

    private static double number(Object v, double dflt) {
        return v instanceof Number && ((Number) v).doubleValue() > 0 ? ((Number) v).doubleValue() : dflt;
    }

    private boolean stuck() {
        long now = System.nanoTime();
        for (int i = 0; i < threads; i++) {
            long since = busySince.get(i);
            if (since != 0 && now - since > stuckAfterNanos) {
                if (!stuckReported) {
                    stuckReported = true;
                    System.err.println("babelsip: a handler has been busy for more than "
                            + stuckAfterNanos / 1_000_000 + " ms; not answering pings so the host restarts this worker");
                }
                return true;
            }
        }
        return false;
    }

    // ------------------------------------------------------------ handlers
    private Thread[] startWorkers() {
        Thread[] ws = new Thread[threads];
        for (int i = 0; i < threads; i++) {
            final int slot = i;
            // Small stacks: the host caps the worker's address space (RLIMIT_AS).
            ws[i] = new Thread(null, () -> work(slot), "route-" + i, 1 << 20);
            ws[i].setDaemon(true);
            ws[i].start();
        }
        return ws;
    }

    @SuppressWarnings("unchecked")
    private void work(int slot) {
        try {
            while (true) {
                Object item = queue.poll();
                if (item == null) {
                    flush();
                    item = queue.take();
                }
                if (item == STOP) {
                    flush();
                    return;
                }
                busySince.set(slot, System.nanoTime() | 1);
                try {
                    send(handle((Map<String, Object>) item));
                } finally {
                    busySince.set(slot, 0);
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void finish(Thread[] workers) {
        if (workers != null) {
            for (int i = 0; i < workers.length; i++) {
                queue.add(STOP);
            }
            for (Thread w : workers) {
                try {
                    w.join();
                } catch (InterruptedException e) {
                    break;
                }
            }
        }
        flush();
    }

    /** Runs one event's hook and returns its decision or error message. */
    @SuppressWarnings("unchecked")
    Map<String, Object> handle(Map<String, Object> msg) {
        Object id = msg.get("id");
        String hook = String.valueOf(msg.get("hook"));
        Object ev = msg.get("event");
        Request req = new Request(this, id, hook, ev instanceof Map ? (Map<String, Object>) ev
                                                                   : new LinkedHashMap<>());
        try {
            switch (hook) {
                case "on_request":
                    route.onRequest(req);
                    break;
                case "on_failure":
                    route.onFailure(req, req.replyInfo());
                    break;
                case "on_reply":
                    route.onReply(req, req.replyInfo());
                    break;
                default:
                    break;  // a hook this SDK does not know: no verbs
            }
            return req.decisionMessage();
        } catch (StackOverflowError | Exception e) {
            return errorMessage(id, e);
        } catch (VirtualMachineError e) {
            // Out of memory or worse: answer, then let the host start a fresh JVM.
            send(errorMessage(id, e));
            flush();
            Runtime.getRuntime().halt(3);
            throw e;
        } catch (Throwable e) {
            return errorMessage(id, e);  // e.g. an AssertionError or LinkageError in the route
        }
    }

    /** The error message for a throwable: "Type: message", and where in the route it was thrown. */
    Map<String, Object> errorMessage(Object id, Throwable e) {
        Throwable t = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
        Map<String, Object> msg = new LinkedHashMap<>();
        msg.put("type", "error");
        msg.put("id", id);
        msg.put("message", describe(t));
        StackTraceElement at = where(t, routeFile);
        if (at != null) {
            msg.put("file", at.getFileName());
            msg.put("line", (long) at.getLineNumber());
        }
        return msg;
    }

    static String describe(Throwable t) {
        String text = t.getMessage();
        return t.getClass().getSimpleName() + (text == null ? "" : ": " + text);
    }

    /** The innermost stack frame in the route's file, or null. */
    static StackTraceElement where(Throwable t, String routeFile) {
        for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
            for (StackTraceElement el : c.getStackTrace()) {
                if (routeFile.equals(el.getFileName()) && el.getLineNumber() > 0) {
                    return el;
                }
            }
        }
        return null;
    }

    // ------------------------------------------------------------ host calls
    /** Sends a call and waits for its result (the reader thread completes it). */
    Object call(String op, List<Object> args, Object event) {
        long cid = nextCall.incrementAndGet();
        CompletableFuture<Map<String, Object>> f = new CompletableFuture<>();
        calls.put(cid, f);
        if (ended) {
            calls.remove(cid);
            throw new StoreException(op + ": the host closed the connection");
        }
        Map<String, Object> msg = new LinkedHashMap<>();
        msg.put("type", "call");
        msg.put("id", cid);
        msg.put("event", event);
        msg.put("op", op);
        msg.put("args", args);
        send(msg);
        flush();
        Map<String, Object> res;
        try {
            res = f.get();
        } catch (InterruptedException e) {
            calls.remove(cid);
            Thread.currentThread().interrupt();
            throw new StoreException(op + ": interrupted");
        } catch (ExecutionException e) {
            throw new StoreException(op + ": " + e.getCause().getMessage());
        }
        if (res.containsKey("error") && res.get("error") != null) {
            throw new StoreException(op + ": " + res.get("error"));
        }
        return res.get("value");
    }
}
