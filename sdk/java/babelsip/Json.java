package babelsip;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small JSON (RFC 8259) reader and writer over UTF-8 bytes, so the SDK needs
 * no jar beyond the JDK (which has no JSON).
 *
 * <p>Reading gives {@code Map<String,Object>} (insertion-ordered), {@code List<Object>},
 * {@code String}, {@code Long} (integers that fit) or {@code Double}, {@code Boolean}
 * and {@code null}. Writing accepts those plus any {@code Number}, {@code Collection},
 * array and {@code Map} with string keys; it escapes every control character, so one
 * value is always one line.
 */
public final class Json {
    private Json() {}

    /** Malformed input, or a value that cannot be written. */
    public static final class JsonException extends RuntimeException {
        JsonException(String message) {
            super(message);
        }
    }

    private static final int MAX_DEPTH = 512;  // deeper input is refused, not a StackOverflowError

    // ------------------------------------------------------------------ reading

    /** Parses one JSON value from {@code buf[off, off+len)}; trailing whitespace only. */
    public static Object parse(byte[] buf, int off, int len) {
        Reader r = new Reader(buf, off, off + len);
        Object value = r.value(0);
        r.skipSpace();
        if (r.pos != r.end) {
            throw r.error("trailing characters");
        }
        return value;
    }

    public static Object parse(String text) {
        byte[] b = text.getBytes(StandardCharsets.UTF_8);
        return parse(b, 0, b.length);
    }

    private static final class Reader {
        final byte[] buf;
        final int end;
        int pos;
        private StringBuilder scratch;

        Reader(byte[] buf, int pos, int end) {
            this.buf = buf;
            this.pos = pos;
            this.end = end;
        }

        JsonException error(String what) {
            return new JsonException(what + " at byte " + pos);
        }

        void skipSpace() {
            while (pos < end) {
                byte c = buf[pos];
                if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                    return;
                }
                pos++;
            }
        }

        Object value(int depth) {
            if (depth > MAX_DEPTH) {
                throw error("nested too deeply");
            }
            skipSpace();
            if (pos >= end) {
                throw error("unexpected end");
            }
            byte c = buf[pos];
            switch (c) {
                case '{': return object(depth);
                case '[': return array(depth);
                case '"': return string();
                case 't': return literal("true", Boolean.TRUE);
                case 'f': return literal("false", Boolean.FALSE);
                case 'n': return literal("null", null);
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) {
                        return number();
                    }
                    throw error("unexpected character '" + (char) c + "'");
            }
        }

        Object literal(String word, Object value) {
            int n = word.length();
            if (end - pos < n) {
                throw error("bad literal");
            }
            for (int i = 0; i < n; i++) {
                if (buf[pos + i] != word.charAt(i)) {
                    throw error("bad literal");
                }
            }
            pos += n;
            return value;
        }

        Map<String, Object> object(int depth) {
            pos++;  // {
            Map<String, Object> map = new LinkedHashMap<>();
            skipSpace();
            if (pos < end && buf[pos] == '}') {
                pos++;
                return map;
            }
            while (true) {
                skipSpace();
                if (pos >= end || buf[pos] != '"') {
                    throw error("expected a string key");
                }
                String key = string();
                skipSpace();
                if (pos >= end || buf[pos] != ':') {
                    throw error("expected ':'");
                }
                pos++;
                map.put(key, value(depth + 1));
                skipSpace();
                if (pos >= end) {
                    throw error("unterminated object");
                }
                byte c = buf[pos++];
                if (c == '}') {
                    return map;
                }
                if (c != ',') {
                    throw error("expected ',' or '}'");
                }
            }
        }

        List<Object> array(int depth) {
            pos++;  // [
            List<Object> list = new ArrayList<>();
            skipSpace();
            if (pos < end && buf[pos] == ']') {
                pos++;
                return list;
            }
            while (true) {
                list.add(value(depth + 1));
                skipSpace();
                if (pos >= end) {
                    throw error("unterminated array");
                }
                byte c = buf[pos++];
                if (c == ']') {
                    return list;
                }
                if (c != ',') {
                    throw error("expected ',' or ']'");
                }
            }
        }

        String string() {
            int start = ++pos;  // after the opening quote
            // Fast path: plain ASCII without escapes (most SIP fields).
            while (pos < end) {
                byte c = buf[pos];
                if (c == '"') {
                    pos++;
                    return new String(buf, start, pos - 1 - start, StandardCharsets.ISO_8859_1);
                }
                if (c == '\\' || c < 0x20) {  // c < 0x20 also catches bytes >= 0x80 (negative)
                    break;
                }
                pos++;
            }
            return slowString(start);
        }

        private String slowString(int start) {
            StringBuilder sb = scratch == null ? (scratch = new StringBuilder(64)) : scratch;
            sb.setLength(0);
            int run = start;  // start of bytes not yet copied
            while (true) {
                if (pos >= end) {
                    throw error("unterminated string");
                }
                byte c = buf[pos];
                if (c == '"') {
                    sb.append(new String(buf, run, pos - run, StandardCharsets.UTF_8));
                    pos++;
                    return sb.toString();
                }
                if (c == '\\') {
                    sb.append(new String(buf, run, pos - run, StandardCharsets.UTF_8));
                    pos++;
                    if (pos >= end) {
                        throw error("unterminated escape");
                    }
                    byte e = buf[pos++];
                    switch (e) {
                        case '"': sb.append('"'); break;
                        case '\\': sb.append('\\'); break;
                        case '/': sb.append('/'); break;
                        case 'b': sb.append('\b'); break;
                        case 'f': sb.append('\f'); break;
                        case 'n': sb.append('\n'); break;
                        case 'r': sb.append('\r'); break;
                        case 't': sb.append('\t'); break;
                        case 'u': sb.append(hex4()); break;
                        default: throw error("bad escape");
                    }
                    run = pos;
                    continue;
                }
                if (c >= 0 && c < 0x20) {
                    throw error("control character in string");
                }
                pos++;
            }
        }

        private char hex4() {
            if (end - pos < 4) {
                throw error("bad \\u escape");
            }
            int v = 0;
            for (int i = 0; i < 4; i++) {
                int d = Character.digit(buf[pos++], 16);
                if (d < 0) {
                    throw error("bad \\u escape");
                }
                v = v << 4 | d;
            }
            return (char) v;  // surrogate pairs combine as two chars
        }

        Object number() {
            int start = pos;
            boolean integer = true;
            if (buf[pos] == '-') {
                pos++;
            }
            while (pos < end) {
                byte c = buf[pos];
                if (c >= '0' && c <= '9') {
                    pos++;
                } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                    integer = false;
                    pos++;
                } else {
                    break;
                }
            }
            int n = pos - start;
            boolean neg = buf[start] == '-';
            int digits = neg ? n - 1 : n;
            if (digits == 0) {
                throw error("bad number");
            }
            if (integer && digits <= 18) {  // cannot overflow a long
                long v = 0;
                for (int i = neg ? start + 1 : start; i < pos; i++) {
                    v = v * 10 + (buf[i] - '0');
                }
                return neg ? -v : v;
            }
            String text = new String(buf, start, n, StandardCharsets.ISO_8859_1);
            try {
                if (integer) {
                    try {
                        return Long.parseLong(text);
                    } catch (NumberFormatException e) {
                        // beyond a long: fall back to a double, as most JSON readers do
                    }
                }
                return Double.parseDouble(text);
            } catch (NumberFormatException e) {
                throw error("bad number");
            }
        }
    }

    // ------------------------------------------------------------------ writing

    /** Encodes {@code value} as one line of UTF-8 JSON (no newline). */
    public static byte[] toBytes(Object value) {
        Writer w = new Writer(256);
        w.value(value, 0);
        return Arrays.copyOf(w.buf, w.len);
    }

    public static String toString(Object value) {
        return new String(toBytes(value), StandardCharsets.UTF_8);
    }

    /** A growable byte buffer that JSON values are appended to. */
    static final class Writer {
        byte[] buf;
        int len;

        Writer(int size) {
            buf = new byte[size];
        }

        void reset() {
            len = 0;
        }

        private void room(int n) {
            if (len + n > buf.length) {
                buf = Arrays.copyOf(buf, Math.max(buf.length * 2, len + n));
            }
        }

        void raw(byte b) {
            room(1);
            buf[len++] = b;
        }

        private void ascii(String s) {
            int n = s.length();
            room(n);
            for (int i = 0; i < n; i++) {
                buf[len++] = (byte) s.charAt(i);
            }
        }

        void value(Object v, int depth) {
            if (depth > MAX_DEPTH) {
                throw new JsonException("value nested too deeply (a cycle?)");
            }
            if (v == null) {
                ascii("null");
            } else if (v instanceof String) {
                string((String) v);
            } else if (v instanceof Boolean) {
                ascii((Boolean) v ? "true" : "false");
            } else if (v instanceof Long || v instanceof Integer || v instanceof Short
                    || v instanceof Byte || v instanceof java.math.BigInteger) {
                ascii(v.toString());
            } else if (v instanceof Number) {
                double d = ((Number) v).doubleValue();
                if (Double.isNaN(d) || Double.isInfinite(d)) {
                    throw new JsonException("cannot encode " + d + " in JSON");
                }
                ascii(Double.toString(d));  // "1.5", "5.0", "1.0E10": all valid JSON
            } else if (v instanceof Map) {
                raw((byte) '{');
                boolean first = true;
                for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                    if (!(e.getKey() instanceof String)) {
                        throw new JsonException("object keys must be strings, got " + e.getKey());
                    }
                    if (!first) {
                        raw((byte) ',');
                    }
                    first = false;
                    string((String) e.getKey());
                    raw((byte) ':');
                    value(e.getValue(), depth + 1);
                }
                raw((byte) '}');
            } else if (v instanceof Collection) {
                raw((byte) '[');
                boolean first = true;
                for (Object item : (Collection<?>) v) {
                    if (!first) {
                        raw((byte) ',');
                    }
                    first = false;
                    value(item, depth + 1);
                }
                raw((byte) ']');
            } else if (v instanceof Object[]) {
                value(Arrays.asList((Object[]) v), depth);
            } else if (v instanceof Character) {
                string(v.toString());
            } else {
                throw new JsonException("cannot encode a " + v.getClass().getName() + " in JSON");
            }
        }

        private static final byte[] HEX = "0123456789abcdef".getBytes(StandardCharsets.ISO_8859_1);

        void string(String s) {
            int n = s.length();
            room(n + 2);
            buf[len++] = '"';
            for (int i = 0; i < n; i++) {
                char c = s.charAt(i);
                if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
                    room(1);
                    buf[len++] = (byte) c;
                } else if (c == '"' || c == '\\') {
                    room(2);
                    buf[len++] = '\\';
                    buf[len++] = (byte) c;
                } else if (c < 0x20) {
                    room(6);
                    switch (c) {
                        case '\n': buf[len++] = '\\'; buf[len++] = 'n'; break;
                        case '\r': buf[len++] = '\\'; buf[len++] = 'r'; break;
                        case '\t': buf[len++] = '\\'; buf[len++] = 't'; break;
                        default:
                            buf[len++] = '\\';
                            buf[len++] = 'u';
                            buf[len++] = '0';
                            buf[len++] = '0';
                            buf[len++] = HEX[c >> 4];
                            buf[len++] = HEX[c & 15];
                    }
                } else if (c < 0x800) {
                    room(2);
                    buf[len++] = (byte) (0xC0 | c >> 6);
                    buf[len++] = (byte) (0x80 | c & 0x3F);
                } else if (Character.isHighSurrogate(c) && i + 1 < n
                        && Character.isLowSurrogate(s.charAt(i + 1))) {
                    int cp = Character.toCodePoint(c, s.charAt(++i));
                    room(4);
                    buf[len++] = (byte) (0xF0 | cp >> 18);
                    buf[len++] = (byte) (0x80 | cp >> 12 & 0x3F);
                    buf[len++] = (byte) (0x80 | cp >> 6 & 0x3F);
                    buf[len++] = (byte) (0x80 | cp & 0x3F);
                } else if (Character.isSurrogate(c)) {
                    room(3);  // a lone surrogate is not UTF-8: write U+FFFD
                    buf[len++] = (byte) 0xEF;
                    buf[len++] = (byte) 0xBF;
                    buf[len++] = (byte) 0xBD;
                } else {
                    room(3);
                    buf[len++] = (byte) (0xE0 | c >> 12);
                    buf[len++] = (byte) (0x80 | c >> 6 & 0x3F);
                    buf[len++] = (byte) (0x80 | c & 0x3F);
                }
            }
            room(1);
            buf[len++] = '"';
        }
    }
}
