package babelsip;

/** Log lines in the host's log for this route (sdk/PROTOCOL.md "log"). */
public final class Log {
    private Log() {}

    public static void debug(String message) {
        log("debug", message);
    }

    public static void info(String message) {
        log("info", message);
    }

    public static void warning(String message) {
        log("warning", message);
    }

    public static void error(String message) {
        log("error", message);
    }

    /** @param level debug, info, warning or error */
    public static void log(String level, String message) {
        Session s = Session.current;
        if (s == null) {
            System.err.println(message);
        } else {
            s.log(level, String.valueOf(message), null);
        }
    }
}
