package babelsip;

import java.io.File;
import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.reflect.Constructor;
import java.lang.reflect.InvocationTargetException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * Stdio runner for Java routes, started by the host (sdk/PROTOCOL.md §9) after
 * it compiled the SDK and the route into one class directory:
 *
 * <pre>java -cp CACHE babelsip.Runner Main</pre>
 *
 * The argument is the route file's stem, which is the class name. The
 * protocol keeps fd 1; {@code System.out} is pointed at stderr so a route's
 * prints cannot corrupt it. A route that cannot be loaded (no such class, not
 * a {@link Route}, a constructor or static initialiser that throws) is reported
 * as {@code fatal} and the runner exits 1. First of all it starts its
 * {@link Lifeline} watcher: when the host dies, it ends this worker and every
 * process the route started.
 *
 * <p>{@code java -cp SDK_CLASSES babelsip.Runner --dump-contract} prints the
 * verbs, event accessors and store calls this SDK offers instead
 * ({@link ContractDump}).
 */
public final class Runner {
    private Runner() {}

    /** Why a route could not be loaded. */
    static final class LoadFailure extends Exception {
        final Throwable origin;

        LoadFailure(String message, Throwable cause) {
            super(message);
            this.origin = cause;
        }
    }

    public static void main(String[] args) throws IOException {
        if (args.length == 1 && args[0].equals("--dump-contract")) {
            ContractDump.print();   // no route, no host: nothing to watch
            return;
        }
        Lifeline.watch();   // before the route's code runs
        OutputStream proto = new FileOutputStream(FileDescriptor.out);
        System.setOut(System.err);
        if (args.length != 1) {
            System.err.println("usage: java -cp CLASSES babelsip.Runner ROUTE_CLASS");
            System.exit(2);
        }
        String stem = args[0];
        String routeFile = stem + ".java";
        Route route;
        try {
            route = load(stem);
        } catch (LoadFailure f) {
            Map<String, Object> fatal = new LinkedHashMap<>();
            fatal.put("type", "fatal");
            fatal.put("message", f.getMessage());
            StackTraceElement at = f.origin == null ? null : Session.where(f.origin, routeFile);
            fatal.put("file", at != null ? at.getFileName() : routeFile);
            if (at != null) {
                fatal.put("line", (long) at.getLineNumber());
            }
            proto.write(Json.toBytes(fatal));
            proto.write('\n');
            proto.flush();
            if (f.origin != null) {
                f.origin.printStackTrace();
            }
            System.exit(1);
            return;
        }
        Session session = new Session(route, routeFile, new FileInputStream(FileDescriptor.in), proto);
        System.exit(session.run());
    }

    /** Finds the route class by name, makes one instance. */
    static Route load(String stem) throws LoadFailure {
        Class<?> cls = find(stem);
        if (!Route.class.isAssignableFrom(cls)) {
            throw new LoadFailure("class " + cls.getName() + " does not implement babelsip.Route", null);
        }
        try {
            Constructor<?> ctor = cls.getDeclaredConstructor();
            ctor.setAccessible(true);  // a package-private route class is fine
            return (Route) ctor.newInstance();
        } catch (NoSuchMethodException e) {
            throw new LoadFailure("class " + cls.getName() + " needs a constructor without arguments", null);
        } catch (InvocationTargetException e) {
            throw new LoadFailure(Session.describe(e.getCause()), e.getCause());
        } catch (ExceptionInInitializerError e) {
            Throwable c = e.getCause() != null ? e.getCause() : e;
            throw new LoadFailure(Session.describe(c), c);
        } catch (ReflectiveOperationException | LinkageError | RuntimeException e) {
            throw new LoadFailure(Session.describe(e), e);
        }
    }

    /**
     * The class named {@code stem}; when the route file declares a package, the
     * class of that simple name (case-insensitive, as route names are) found on
     * the class path outside the SDK's own package.
     */
    static Class<?> find(String stem) throws LoadFailure {
        ClassLoader loader = Runner.class.getClassLoader();
        try {
            return Class.forName(stem, false, loader);
        } catch (ClassNotFoundException | NoClassDefFoundError e) {
            // fall through: look for a packaged class of that name
        }
        for (String entry : System.getProperty("java.class.path", "").split(File.pathSeparator)) {
            Path root = Paths.get(entry.isEmpty() ? "." : entry);
            if (!Files.isDirectory(root)) {
                continue;
            }
            List<Path> hits;
            try (Stream<Path> files = Files.walk(root, 16)) {
                hits = files.filter(p -> p.getFileName().toString().equalsIgnoreCase(stem + ".class"))
                        .filter(p -> !root.relativize(p).startsWith("babelsip"))
                        .collect(Collectors.toList());
            } catch (IOException e) {
                continue;
            }
            for (Path hit : hits) {
                String rel = root.relativize(hit).toString();
                String name = rel.substring(0, rel.length() - ".class".length())
                        .replace(File.separatorChar, '.');
                try {
                    return Class.forName(name, false, loader);
                } catch (ClassNotFoundException | LinkageError e) {
                    // try the next one
                }
            }
        }
        throw new LoadFailure("no class " + stem + " on the class path (the class must be named "
                + "like its file)", null);
    }
}
