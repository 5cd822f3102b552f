package babelsip;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;

/**
 * {@code java -cp SDK_CLASSES babelsip.Runner --dump-contract}: prints, as one
 * JSON object, the verbs, event accessors and store calls this SDK offers, for
 * the contract tests (tests/contract) to compare with the host's table.
 *
 * <p>The names are found by trying the SDK's own classes, not read from a list,
 * so a missing, misnamed or wrongly wired wrapper shows: every public method of
 * {@link Request} (the overload with the fewest parameters, called with
 * placeholders) runs in every hook on a fresh request whose event records the
 * keys read; one that records a verb, or refuses with "not allowed", is a
 * verb, any other is an event accessor. A method of a host-call object (store,
 * registrar, dialog) is called without a host, and the op it names in its
 * refusal is recorded. Same shape as the Python and Perl dumps.
 */
final class ContractDump {
    private ContractDump() {}

    static final List<String> HOOKS = List.of("on_request", "on_failure", "on_reply");
    // Public methods that are the session's, not the route's.
    private static final Set<String> NOT_ROUTE_API = Set.of("verbs", "decisionMessage", "toString");

    /** An empty event that remembers which keys were asked for. */
    private static final class ReadLog extends HashMap<String, Object> {
        final Set<String> read = new TreeSet<>();

        @Override
        public Object get(Object key) {
            read.add(String.valueOf(key));
            return null;
        }
    }

    static void print() {
        Map<String, Object> verbs = new TreeMap<>();
        Map<String, Object> fields = new TreeMap<>();
        for (Method m : publicMethods(Request.class)) {
            String name = m.getName();
            if (NOT_ROUTE_API.contains(name)) {
                continue;
            }
            Set<String> sent = new TreeSet<>();
            Set<String> read = new TreeSet<>();
            List<String> allowed = new ArrayList<>();
            boolean refused = false;
            for (String hook : HOOKS) {
                ReadLog ev = new ReadLog();
                Request req = Request.forTest(hook, ev);
                Throwable failure = invoke(m, req);
                read.addAll(ev.read);
                if (failure instanceof VerbException && failure.getMessage().contains("is not allowed in")) {
                    refused = true;
                }
                if (!req.verbs().isEmpty()) {
                    sent.add((String) ((List<?>) req.verbs().get(0)).get(0));
                    allowed.add(hook);
                }
            }
            if (!sent.isEmpty() || refused) {
                Map<String, Object> verb = new LinkedHashMap<>();
                verb.put("sends", sent.isEmpty() ? null : sent.iterator().next());
                verb.put("hooks", allowed);
                verb.put("decision", !allowed.isEmpty() && isDecision(m, allowed.get(0)));
                verbs.put(name, verb);
            } else {
                fields.put(name, new ArrayList<>(read));
            }
        }
        Request req = Request.forTest("on_request", new HashMap<>());
        Map<String, Object> out = new TreeMap<>(Map.of("sdk", "java", "hooks", HOOKS, "verbs", verbs,
                                                        "fields", fields,
                                                        "store", hostCalls(Store.class, req.store()),
                                                        "registrar", hostCalls(Registrar.class, req.registrar()),
                                                        "dialog", hostCalls(Dialog.class, req.dialog())));
        System.out.println(Json.toString(out));
    }

    /** {method: op it names} of one host-call object without a host. */
    private static Map<String, Object> hostCalls(Class<?> cls, Object target) {
        Map<String, Object> found = new TreeMap<>();
        for (Method m : publicMethods(cls)) {
            if (m.getName().equals("call")) {
                continue;
            }
            Throwable failure = invoke(m, target);
            String message = failure instanceof StoreException ? failure.getMessage() : null;
            found.put(m.getName(), message == null ? null : message.split(":", 2)[0]);
        }
        return found;
    }

    private static boolean isDecision(Method m, String hook) {
        Request req = Request.forTest(hook, new HashMap<>());
        invoke(m, req);
        return invoke(m, req) instanceof VerbException;
    }

    /** One method per public name: the overload with the fewest parameters. */
    private static List<Method> publicMethods(Class<?> cls) {
        Map<String, Method> byName = new TreeMap<>();
        for (Method m : cls.getDeclaredMethods()) {
            int mod = m.getModifiers();
            if (!Modifier.isPublic(mod) || Modifier.isStatic(mod)) {
                continue;
            }
            byName.merge(m.getName(), m, (a, b) -> Comparator.comparingInt(Method::getParameterCount)
                    .compare(a, b) <= 0 ? a : b);
        }
        return new ArrayList<>(byName.values());
    }

    /** Calls m with placeholder arguments; returns what it threw, or null. */
    private static Throwable invoke(Method m, Object target) {
        Class<?>[] types = m.getParameterTypes();
        Object[] args = new Object[types.length];
        for (int i = 0; i < types.length; i++) {
            args[i] = placeholder(types[i]);
        }
        try {
            m.invoke(target, args);
            return null;
        } catch (InvocationTargetException e) {
            return e.getCause();
        } catch (IllegalAccessException e) {
            return e;
        }
    }

    private static Object placeholder(Class<?> type) {
        if (type == int.class) {
            return 200;
        }
        if (type == long.class) {
            return 1L;
        }
        if (type == double.class) {
            return 1.0;
        }
        if (type == boolean.class) {
            return false;
        }
        if (type == String[].class) {
            return new String[] {"x"};
        }
        if (type == List.class) {
            return new ArrayList<>(List.of("x"));
        }
        if (type == Map.class) {
            return new LinkedHashMap<>();
        }
        if (type == String.class || type == Object.class) {
            return "x";
        }
        return null;   // Number and anything else: the "not given" of an optional argument
    }
}
