package babelsip;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.concurrent.TimeUnit;

/**
 * The worker's side of the host's lifeline (sdk/PROTOCOL.md §9 "Lifeline").
 *
 * <p>The host hands every worker the read end of a pipe, fd
 * {@code $BABELSIP_LIFELINE_FD}, whose write end only the host holds and never
 * writes to. End of file on it means the host is gone — however it died,
 * SIGKILL included — and the worker must end its whole process group, the
 * processes its route started too.
 *
 * <p>Not a Java thread: a thread blocked in a read is "in native", and the JVM
 * waits 300 ms for such threads at every exit (HotSpot's
 * VM_Exit::wait_for_threads_in_native_to_block), which also holds for the
 * reaper thread of a child process the JVM waits for; and Java has no killpg.
 * Instead a shell, started with the lifeline as its input (opening
 * {@code /proc/self/fd/N} opens the same pipe; for a pipe the open never
 * waits for a writer), forks a background loop and exits at once. The loop
 * stays in this worker's process group reading the lifeline; at its end of
 * file it SIGKILLs the group, this JVM included. It holds nothing else, and
 * goes with the group when the host stops the worker.
 */
final class Lifeline {
    static final String ENV = "BABELSIP_LIFELINE_FD";

    /** How long the shell may take to start its loop and exit. */
    private static final long START_WAIT_MS = 5000;

    private Lifeline() {}

    /**
     * Starts the watcher on a thread of its own, so the worker's start does not
     * wait for it (starting a process costs a JVM 30-40 ms); false when there is
     * no lifeline (not started by a host).
     */
    static boolean watch() {
        String fd = System.getenv(ENV);
        if (fd == null || !fd.matches("[0-9]+")) {
            return false;
        }
        Thread starter = new Thread(() -> start(fd), "babelsip-lifeline");
        starter.setDaemon(true);
        starter.start();
        return true;
    }

    /** Starts the shell loop watching lifeline {@code fd}; false if it cannot run. */
    static boolean start(String fd) {
        long pid = ProcessHandle.current().pid();
        // As the host starts workers, this JVM leads its group; run by hand,
        // the group is someone else's and only this JVM goes.
        // (dash's kill takes no "--": a negative pid right after the signal is a group.)
        String target = processGroup() == pid ? "-" + pid : String.valueOf(pid);
        String script = "exec 3<&0 0</dev/null; "
                + "{ while read -r _; do :; done <&3; kill -KILL " + target + "; } >/dev/null 2>&1 &";
        try {
            Process sh = new ProcessBuilder("/bin/sh", "-c", script)
                    .redirectInput(new File("/proc/self/fd/" + fd))
                    .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                    .redirectError(ProcessBuilder.Redirect.INHERIT)
                    .start();
            if (sh.waitFor(START_WAIT_MS, TimeUnit.MILLISECONDS) && sh.exitValue() == 0) {
                return true;
            }
            sh.destroyForcibly();
            System.err.println("babelsip: the lifeline watcher did not start; this worker may outlive the host");
        } catch (IOException e) {
            System.err.println("babelsip: no lifeline watcher (" + e.getMessage()
                    + "); this worker may outlive the host");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return false;
    }

    /** Field 5 of /proc/self/stat (after the parenthesised command name), or -1. */
    static long processGroup() {
        try {
            String stat = new String(Files.readAllBytes(Paths.get("/proc/self/stat")),
                    StandardCharsets.US_ASCII);
            String[] fields = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
            return Long.parseLong(fields[2]);
        } catch (IOException | RuntimeException e) {
            return -1;
        }
    }
}
