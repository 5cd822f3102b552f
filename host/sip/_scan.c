/* One pass over a SIP message head (RFC 3261 §7, §25), for host/sip/parser.py.
 *
 * bs_scan() finds the end of the header block, checks every byte of it, cuts
 * it into header lines and reports where each name and (stripped) value
 * lies, which well-known header each one is, and the fields every message
 * needs (Call-ID, CSeq, Content-Length, the first two Vias, From/To counts).
 * It only ever *accepts* plain, common messages: whenever something is
 * unusual (folding, bare LF, non-ASCII, a control character, a header with
 * whitespace before its colon, duplicates, a number
 * out of range...) it returns BS_FALLBACK and the pure-Python parser, which
 * knows every rule and every error message, decides. So this file can be
 * strict and short, and the two paths cannot disagree on an accepted message
 * as long as what it accepts is parsed the same way (tests/sip check that).
 *
 * One cffi call costs about as much as one bytes.find, so this is worth it
 * only because it replaces dozens of per-line Python operations.
 */

#include <stdint.h>
#include <string.h>

#define BS_FALLBACK (-1)
#define BS_VIA_LIST (-2)
#define BS_VIA_LIST_CHECKED (-3)
#define BS_MAX_LINE 8192        /* parser.MAX_LINE */
#define BS_MAX_HEADERS 256      /* parser.MAX_HEADERS */
#define BS_MAX_BODY 65535       /* parser.MAX_MESSAGE: a larger Content-Length is an error */

/* Layout of out[] (int32): a fixed part, then 5 ints per header:
 * id (0 = not well known), name start, name end, value start, value end. */
enum {
    BS_HEAD_END = 0,    /* offset of the "\r\n\r\n" that ends the head */
    BS_LINE_END,        /* end of the start line */
    BS_COUNT,           /* number of header lines */
    BS_CONTENT_LENGTH,  /* -1 when absent */
    BS_CALL_ID,         /* header index */
    BS_CSEQ_NUM,
    BS_CSEQ_METHOD_START,
    BS_CSEQ_METHOD_END,
    BS_VIA1,            /* header index of the top Via */
    BS_VIA2,            /* header index of the second Via, -1 when none or plain;
                         * when a Via line holds a list, BS_VIA_LIST (Python
                         * collects the Vias and checks the second) or
                         * BS_VIA_LIST_CHECKED (the second is plain: checked) */
    /* The start line, when it has the plain form (else all -1):
     * request: method end, URI start, URI end; response: status code,
     * reason start, reason end (kind tells which). */
    BS_KIND,            /* 1 request, 2 response, 0 let Python read it */
    BS_SL_A, BS_SL_B, BS_SL_C,
    /* The top Via when it is plain (else BS_VIA_OK is 0): transport end,
     * host start/end, port (-1 none), start of the parameters, its end (the
     * line's, or its element's in a list). */
    BS_VIA_OK, BS_VIA_TRANSPORT_END, BS_VIA_HOST_START, BS_VIA_HOST_END,
    BS_VIA_PORT, BS_VIA_PARAMS, BS_VIA_END,
    /* 1 when the header rows are the lines as received but for Via lists:
     * no Route, Record-Route, Contact or Path line holds a comma, each Via
     * list is plain (no quotes, no '<', no empty element), the values
     * number at most BS_MAX_HEADERS, Content-Length appears at most once
     * (scanned.py). */
    BS_REGULAR,
    BS_FIXED
};

/* Well-known names, lower-case, with their ids; the Python side keeps the
 * same table (parser._SCAN_KEYS) and a test checks they agree. Ids 1-5 are
 * the headers whose comma lists the parser splits. */
struct bs_name { const char *name; unsigned char len; unsigned char id; };
static const struct bs_name bs_names[] = {
    {"via", 3, 1}, {"v", 1, 1},
    {"route", 5, 2}, {"record-route", 12, 3},
    {"contact", 7, 4}, {"m", 1, 4}, {"path", 4, 5},
    {"from", 4, 6}, {"f", 1, 6}, {"to", 2, 7}, {"t", 1, 7},
    {"call-id", 7, 8}, {"i", 1, 8}, {"cseq", 4, 9},
    {"content-length", 14, 10}, {"l", 1, 10},
    {"max-forwards", 12, 11},
    {"content-type", 12, 12}, {"c", 1, 12},
    {"subject", 7, 13}, {"s", 1, 13},
    {"supported", 9, 14}, {"k", 1, 14},
    {"allow", 5, 15}, {"user-agent", 10, 16}, {"expires", 7, 17},
    {"require", 7, 18}, {"proxy-require", 13, 19}, {"server", 6, 20},
    {"accept", 6, 21}, {"authorization", 13, 22}, {"proxy-authorization", 19, 23},
    {"www-authenticate", 16, 24}, {"proxy-authenticate", 18, 25},
    {"date", 4, 26}, {"event", 5, 27}, {"o", 1, 27},
    {"allow-events", 12, 28}, {"u", 1, 28}, {"session-expires", 15, 29}, {"x", 1, 29},
    {"p-asserted-identity", 19, 30}, {"rseq", 4, 31}, {"rack", 4, 32},
    {"content-encoding", 16, 33}, {"e", 1, 33}, {"refer-to", 8, 34}, {"r", 1, 34},
    {"referred-by", 11, 35}, {"b", 1, 35}, {"timestamp", 9, 36}, {"organization", 12, 37},
    {"min-se", 6, 38}, {"privacy", 7, 39}, {"reason", 6, 40}, {"accept-language", 15, 41},
    {"accept-encoding", 15, 42}, {"warning", 7, 43}, {"unsupported", 11, 44},
    {"retry-after", 11, 45}, {"in-reply-to", 11, 46}, {"priority", 8, 47},
    {"mime-version", 12, 48}, {"content-disposition", 19, 49},
    {0, 0, 0}
};
enum { ID_VIA = 1, ID_PATH = 5, ID_FROM = 6, ID_TO = 7, ID_CALL_ID = 8, ID_CSEQ = 9, ID_CONTENT_LENGTH = 10 };

/* The layout of out[] this file writes (its fixed part's size), so the
 * Python side can refuse an extension built from an older _scan.c. */
int bs_layout(void)
{
    return BS_FIXED;
}

/* Name of the id-th table entry's long form, for the Python side's check. */
const char *bs_name_of(int id)
{
    for (const struct bs_name *e = bs_names; e->name; e++)
        if (e->id == id)
            return e->name;
    return 0;
}

static unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* RFC 3261 §25.1 token characters. */
static int is_token(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c && strchr("-.!%*_+`'~", c) != NULL;
}

static int name_id(const unsigned char *p, size_t n)
{
    for (const struct bs_name *e = bs_names; e->name; e++) {
        if (e->len != n)
            continue;
        size_t i = 0;
        while (i < n && lower(p[i]) == (unsigned char)e->name[i])
            i++;
        if (i == n)
            return e->id;
    }
    return 0;
}

/* 1*10DIGIT -> value, or -1. */
static int64_t digits(const unsigned char *p, const unsigned char *end)
{
    if (p >= end || end - p > 10)
        return -1;
    int64_t v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

/* hostname per parser's _HOSTNAME (RFC 3261 §25.1 with RFC 1035 labels):
 * labels of 1-63 [A-Za-z0-9_-] not starting or ending with '-', separated
 * by dots, one trailing dot allowed. IPv4 addresses match it too. */
static int plain_host(const unsigned char *p, const unsigned char *end)
{
    if (p >= end)
        return 0;
    while (p < end) {
        const unsigned char *label = p;
        while (p < end && *p != '.') {
            unsigned char c = *p;
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                  || c == '-' || c == '_'))
                return 0;
            p++;
        }
        if (p == label || p - label > 63 || *label == '-' || p[-1] == '-')
            return 0;
        if (p < end)
            p++;    /* the dot; a final dot ends the loop */
    }
    return 1;
}

/* 1*5DIGIT in 1..65535 -> value, or -1. */
static int plain_port(const unsigned char *p, const unsigned char *end)
{
    if (end - p > 5)
        return -1;
    int64_t v = digits(p, end);
    return (v > 0 && v < 65536) ? (int)v : -1;
}

/* ';' token [ '=' gen-value ] repeated, no whitespace, no quotes: the form
 * headers._SIMPLE_PARAMS accepts (gen-value adds ':' '[' ']' to token). */
static int plain_params(const unsigned char *p, const unsigned char *end)
{
    if (p >= end)
        return 0;
    while (p < end) {
        if (*p++ != ';')
            return 0;
        const unsigned char *t = p;
        while (p < end && is_token(*p))
            p++;
        if (p == t)
            return 0;
        if (p < end && *p == '=') {
            t = ++p;
            while (p < end && (is_token(*p) || *p == ':' || *p == '[' || *p == ']'))
                p++;
            if (p == t)
                return 0;
        }
    }
    return 1;
}

/* The form headers._parse_via_fast takes, with plain parameters:
 * 'SIP/2.0/' well-known-transport SP host [':' port] [params]. */
/* Elements in a Via list without quotes or '<', or 0 when one is empty
 * (`a,,b`, a trailing comma: not §25.1 grammar, the parser says so). */
static size_t via_elements(const unsigned char *v, const unsigned char *end)
{
    size_t n = 0;
    for (;;) {
        const unsigned char *c = memchr(v, ',', end - v);
        const unsigned char *e = c ? c : end;
        while (v < e && (*v == ' ' || *v == '\t'))
            v++;
        if (v == e)
            return 0;
        n++;
        if (c == NULL)
            return n;
        v = c + 1;
    }
}

static int plain_via(const unsigned char *buf, size_t vs, size_t ve, int32_t *res)
{
    static const char *const transports[] = {"UDP", "TCP", "TLS", "SCTP", "WS", "WSS", 0};
    const unsigned char *p = buf + vs, *end = buf + ve;
    if (ve - vs < 10 || memcmp(p, "SIP/2.0/", 8) != 0)
        return 0;
    const unsigned char *t = p + 8, *sp = t;
    while (sp < end && *sp != ' ')
        sp++;
    int known = 0;
    for (int i = 0; transports[i]; i++)
        if ((size_t)(sp - t) == strlen(transports[i]) && memcmp(t, transports[i], sp - t) == 0)
            known = 1;
    if (!known || sp >= end)
        return 0;
    const unsigned char *host = sp + 1, *semi = host;
    while (semi < end && *semi != ';')
        semi++;
    const unsigned char *colon = host;
    while (colon < semi && *colon != ':')
        colon++;
    if (!plain_host(host, colon))
        return 0;
    int port = -1;
    if (colon < semi && (port = plain_port(colon + 1, semi)) < 0)
        return 0;
    if (semi < end && !plain_params(semi, end))
        return 0;
    res[0] = (int32_t)(sp - buf);
    res[1] = (int32_t)(host - buf);
    res[2] = (int32_t)(colon - buf);
    res[3] = port;
    res[4] = (int32_t)(semi - buf);
    return 1;
}

/* 'METHOD SP scheme:rest SP SIP/2.0' with a token method and a URI of the
 * characters parser._REQUEST_URI admits, or 'SIP/2.0 NNN reason'. */
static int plain_start_line(const unsigned char *buf, size_t len, int32_t *out)
{
    const unsigned char *p = buf, *end = buf + len;
    if (len >= 11 && memcmp(p, "SIP/2.0 ", 8) == 0) {
        int code = 0;
        for (int i = 8; i < 11; i++) {
            if (p[i] < '0' || p[i] > '9')
                return 0;
            code = code * 10 + (p[i] - '0');
        }
        if (code < 100 || code > 699 || (len > 11 && p[11] != ' '))
            return 0;
        const unsigned char *r = p + (len > 11 ? 12 : 11), *re = end;
        while (r < re && (*r == ' ' || *r == '\t'))
            r++;
        while (re > r && (re[-1] == ' ' || re[-1] == '\t'))
            re--;
        out[BS_KIND] = 2; out[BS_SL_A] = code;
        out[BS_SL_B] = (int32_t)(r - buf); out[BS_SL_C] = (int32_t)(re - buf);
        return 1;
    }
    const unsigned char *m = p;
    while (m < end && is_token(*m))
        m++;
    if (m == p || m >= end || *m != ' ' || len < 8 || memcmp(end - 8, " SIP/2.0", 8) != 0)
        return 0;
    const unsigned char *u = m + 1, *ue = end - 8, *q = u;
    if (q >= ue || !((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')))
        return 0;
    while (q < ue && (is_token(*q) && *q != '!' && *q != '%' && *q != '*' && *q != '_'
                      && *q != '`' && *q != '\'' && *q != '~'))
        q++;    /* scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
    if (q >= ue || *q != ':' || q + 1 >= ue)
        return 0;
    for (q++; q < ue; q++)   /* [!#-;=?-\[\]-~]: printable but SP " < > \ */
        if (*q <= ' ' || *q == '"' || *q == '<' || *q == '>' || *q == '\\' || *q > '~')
            return 0;
    out[BS_KIND] = 1; out[BS_SL_A] = (int32_t)(m - buf);
    out[BS_SL_B] = (int32_t)(u - buf); out[BS_SL_C] = (int32_t)(ue - buf);
    return 1;
}

int bs_scan(const unsigned char *buf, size_t len, int32_t *out, size_t cap)
{
    if (len > 0x7fffffff || cap < BS_FIXED)
        return BS_FALLBACK;
    size_t n_headers = 0, n_via = 0, n_from = 0, n_to = 0, n_call_id = 0, n_cseq = 0;
    int via_list = 0, second_plain = 1;   /* no second Via: nothing to check */
    size_t n_via_elems = 0, n_values = 0;   /* values beyond one per line */
    int64_t content_length = -1;
    out[BS_VIA2] = -1;
    out[BS_REGULAR] = 1;
    size_t pos = 0, line = 0;
    for (;;) {
        /* One line: find its CRLF, checking each byte on the way. */
        size_t start = pos;
        while (pos < len) {
            unsigned char c = buf[pos];
            if (c == '\r')
                break;
            if ((c < 0x20 && c != '\t') || c >= 0x7f)
                return BS_FALLBACK;   /* controls, LF alone, non-ASCII */
            pos++;
        }
        if (pos + 1 >= len || buf[pos + 1] != '\n' || pos - start > BS_MAX_LINE)
            return BS_FALLBACK;
        size_t end = pos;
        pos += 2;
        if (line == 0) {
            if (end == start)
                return BS_FALLBACK;
            out[BS_LINE_END] = (int32_t)end;
            out[BS_KIND] = 0;
            plain_start_line(buf, end, out);
        } else {
            if (end == start) {       /* the empty line: end of the head */
                out[BS_HEAD_END] = (int32_t)(start - 2);
                break;
            }
            if (buf[start] == ' ' || buf[start] == '\t')
                return BS_FALLBACK;   /* folding (§7.3.1) */
            size_t colon = start;
            while (colon < end && is_token(buf[colon]))
                colon++;
            if (colon == start || colon == end || buf[colon] != ':')
                return BS_FALLBACK;   /* empty or odd name, LWS before ':', no ':' */
            size_t vs = colon + 1, ve = end;
            while (vs < ve && (buf[vs] == ' ' || buf[vs] == '\t'))
                vs++;
            while (ve > vs && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t'))
                ve--;
            if (n_headers >= BS_MAX_HEADERS || BS_FIXED + 5 * (n_headers + 1) > cap)
                return BS_FALLBACK;
            int id = name_id(buf + start, colon - start);
            int32_t *h = out + BS_FIXED + 5 * n_headers;
            h[0] = id; h[1] = (int32_t)start; h[2] = (int32_t)colon;
            h[3] = (int32_t)vs; h[4] = (int32_t)ve;
            const unsigned char *v = buf + vs, *vend = buf + ve;
            if (id > ID_VIA && id <= ID_PATH && memchr(v, ',', ve - vs))
                out[BS_REGULAR] = 0;
            switch (id) {
            case ID_VIA: {
                /* The first two Vias, lines or elements of a list (sipp's uas
                 * answers with one), are read here when plain; the rest of a
                 * list, and any list with a quoted string or '<' in it, is
                 * split and checked by Python (BS_VIA_LIST). */
                int list = memchr(v, ',', ve - vs) != NULL;
                if (list) {
                    via_list = 1;
                    size_t n = memchr(v, '"', ve - vs) || memchr(v, '<', ve - vs)
                               ? 0 : via_elements(v, vend);
                    if (n == 0)
                        out[BS_REGULAR] = 0;
                    else
                        n_values += n - 1;
                }
                if (list && (memchr(v, '"', ve - vs) || memchr(v, '<', ve - vs))) {
                    if (n_via_elems == 0) {
                        out[BS_VIA1] = (int32_t)n_headers;
                        out[BS_VIA_OK] = 0;
                    }
                    if (n_via_elems < 2)
                        second_plain = 0;
                    n_via_elems += 2;
                    n_via++;
                    break;
                }
                size_t es = vs;
                while (n_via_elems < 2) {
                    const unsigned char *c = list ? memchr(buf + es, ',', ve - es) : NULL;
                    size_t ee = c ? (size_t)(c - buf) : ve;
                    while (ee > es && (buf[ee - 1] == ' ' || buf[ee - 1] == '\t'))
                        ee--;
                    if (n_via_elems == 0) {
                        out[BS_VIA1] = (int32_t)n_headers;
                        out[BS_VIA_OK] = plain_via(buf, es, ee, out + BS_VIA_TRANSPORT_END);
                        out[BS_VIA_END] = (int32_t)ee;
                    } else {
                        /* A response's second Via must parse (§16.7 step 3);
                         * when it is plain, nothing is left for Python to do. */
                        int32_t scratch[5];
                        second_plain = plain_via(buf, es, ee, scratch);
                        if (!list)
                            out[BS_VIA2] = second_plain ? -1 : (int32_t)n_headers;
                    }
                    n_via_elems++;
                    if (c == NULL)
                        break;
                    es = (size_t)(c - buf) + 1;
                    while (es < ve && (buf[es] == ' ' || buf[es] == '\t'))
                        es++;
                }
                n_via++;
                break;
            }
            case ID_FROM: n_from++; break;
            case ID_TO: n_to++; break;
            case ID_CALL_ID:
                /* callid = printable ASCII without LWS (§25.1) */
                if (vs == ve || memchr(v, ' ', ve - vs) || memchr(v, '\t', ve - vs))
                    return BS_FALLBACK;
                out[BS_CALL_ID] = (int32_t)n_headers;
                n_call_id++;
                break;
            case ID_CSEQ: {
                /* CSeq = 1*DIGIT LWS Method, number below 2**31 (§8.1.1.5) */
                const unsigned char *p = v;
                while (p < vend && *p >= '0' && *p <= '9')
                    p++;
                int64_t num = digits(v, p);
                if (num < 0 || num >= 0x80000000LL || p >= vend || (*p != ' ' && *p != '\t'))
                    return BS_FALLBACK;
                while (p < vend && (*p == ' ' || *p == '\t'))
                    p++;
                const unsigned char *m = p;
                while (p < vend && is_token(*p))
                    p++;
                if (p == m || p != vend)
                    return BS_FALLBACK;
                out[BS_CSEQ_NUM] = (int32_t)num;
                out[BS_CSEQ_METHOD_START] = (int32_t)(m - buf);
                out[BS_CSEQ_METHOD_END] = (int32_t)(p - buf);
                n_cseq++;
                break;
            }
            case ID_CONTENT_LENGTH: {
                int64_t cl = digits(v, vend);
                if (cl < 0 || cl > BS_MAX_BODY || (content_length >= 0 && cl != content_length))
                    return BS_FALLBACK;
                if (content_length >= 0)
                    out[BS_REGULAR] = 0;
                content_length = cl;
                break;
            }
            }
            n_headers++;
        }
        line++;
    }
    if (n_via == 0 || n_from != 1 || n_to != 1 || n_call_id != 1 || n_cseq != 1)
        return BS_FALLBACK;
    if (via_list)
        out[BS_VIA2] = second_plain ? BS_VIA_LIST_CHECKED : BS_VIA_LIST;
    if (n_headers + n_values > BS_MAX_HEADERS)
        out[BS_REGULAR] = 0;
    out[BS_COUNT] = (int32_t)n_headers;
    out[BS_CONTENT_LENGTH] = (int32_t)content_length;
    return (int)(BS_FIXED + 5 * n_headers);
}
