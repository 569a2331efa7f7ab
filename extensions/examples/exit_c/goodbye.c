/* The handle_exit_intent tool's logic: a strict JSON reader (just enough to find one string
 * member of an object, validating the whole text) and the farewell rules of the Rust twin
 * (extensions/handle_exit_intent/src/tool.rs). */
#include "goodbye.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

const char EXIT_TOOL_DESCRIPTION[] =
    "用户明确要结束对话或退出系统时调用（例如“退出”“再见，不聊了”“结束对话”）。"
    "调用后会说出告别语并结束本次对话、关闭连接；用户只是询问如何退出时不要调用。"
    "Call this when the user explicitly wants to end the conversation or exit. It speaks the farewell "
    "and then ENDS the conversation (the session is closed); do not call it when the user merely asks "
    "how exiting works.";

const char EXIT_TOOL_PARAMETERS_JSON[] =
    "{\"type\":\"object\",\"properties\":{\"say_goodbye\":{\"type\":\"string\",\"description\":"
    "\"A short, friendly farewell to the user, in the user's language; it is spoken before the "
    "conversation ends.\"}},\"required\":[\"say_goodbye\"]}";

/* Deepest nesting of arrays and objects accepted (guards the recursion). */
#define MAX_DEPTH 64

typedef struct {
    const char *s;
    size_t len;
    size_t pos;
} reader;

/* A JSON string decoded to UTF-8 (malloc'ed), or a span when not decoded. */
typedef struct {
    char *data;
    size_t len;
} buffer;

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void skip_ws(reader *r) {
    while (r->pos < r->len && is_ws(r->s[r->pos])) r->pos++;
}

static int peek(reader *r) { return r->pos < r->len ? (unsigned char)r->s[r->pos] : -1; }

static int literal(reader *r, const char *word) {
    size_t n = strlen(word);
    if (r->len - r->pos < n || memcmp(r->s + r->pos, word, n) != 0) return 0;
    r->pos += n;
    return 1;
}

static int hex4(reader *r, uint32_t *out) {
    uint32_t v = 0;
    if (r->len - r->pos < 4) return 0;
    for (int i = 0; i < 4; i++) {
        char c = r->s[r->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static void put_utf8(char *dst, size_t *n, uint32_t cp) {
    if (cp < 0x80) {
        dst[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        dst[(*n)++] = (char)(0xC0 | (cp >> 6));
        dst[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        dst[(*n)++] = (char)(0xE0 | (cp >> 12));
        dst[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        dst[(*n)++] = (char)(0xF0 | (cp >> 18));
        dst[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        dst[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
}

/* Reads a string at r->pos (which is '"'). With `out`, decodes it into a malloc'ed buffer (the
 * decoded text is never longer than the escaped one). Returns 1, 0 on a syntax error, -2 when
 * memory runs out. The input is valid UTF-8 (a WIT string). */
static int read_string(reader *r, buffer *out) {
    size_t n = 0;
    char *dst = NULL;
    r->pos++; /* the opening quote */
    if (out) {
        dst = malloc(r->len - r->pos + 1);
        if (!dst) return -2;
    }
    while (r->pos < r->len) {
        unsigned char c = (unsigned char)r->s[r->pos++];
        if (c == '"') {
            if (out) {
                dst[n] = '\0';
                out->data = dst;
                out->len = n;
            }
            return 1;
        }
        if (c < 0x20) break;
        if (c != '\\') {
            if (dst) dst[n++] = (char)c;
            continue;
        }
        if (r->pos >= r->len) break;
        char e = r->s[r->pos++];
        uint32_t cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': {
            if (!hex4(r, &cp)) goto fail;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t low;
                if (r->len - r->pos >= 6 && r->s[r->pos] == '\\' && r->s[r->pos + 1] == 'u') {
                    r->pos += 2;
                    if (!hex4(r, &low)) goto fail;
                    if (low >= 0xDC00 && low <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    else cp = 0xFFFD, r->pos -= 6; /* a lone high surrogate; reread the next escape */
                } else {
                    cp = 0xFFFD;
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD; /* a lone low surrogate */
            }
            break;
        }
        default: goto fail;
        }
        if (dst) put_utf8(dst, &n, cp); /* at most 4 bytes for 6+ bytes of escape (or 1 for 2) */
    }
fail:
    free(dst);
    return 0;
}

static int read_number(reader *r) {
    size_t start = r->pos;
    if (peek(r) == '-') r->pos++;
    if (peek(r) == '0') {
        r->pos++;
    } else if (peek(r) >= '1' && peek(r) <= '9') {
        while (peek(r) >= '0' && peek(r) <= '9') r->pos++;
    } else {
        return 0;
    }
    if (peek(r) == '.') {
        r->pos++;
        if (!(peek(r) >= '0' && peek(r) <= '9')) return 0;
        while (peek(r) >= '0' && peek(r) <= '9') r->pos++;
    }
    if (peek(r) == 'e' || peek(r) == 'E') {
        r->pos++;
        if (peek(r) == '+' || peek(r) == '-') r->pos++;
        if (!(peek(r) >= '0' && peek(r) <= '9')) return 0;
        while (peek(r) >= '0' && peek(r) <= '9') r->pos++;
    }
    return r->pos > start;
}

/* Skips one JSON value. Returns 1, 0 on a syntax error. */
static int skip_value(reader *r, int depth) {
    skip_ws(r);
    int c = peek(r);
    if (c == '"') return read_string(r, NULL);
    if (c == 't') return literal(r, "true");
    if (c == 'f') return literal(r, "false");
    if (c == 'n') return literal(r, "null");
    if (c == '-' || (c >= '0' && c <= '9')) return read_number(r);
    if ((c != '[' && c != '{') || depth >= MAX_DEPTH) return 0;
    int object = c == '{';
    char close = object ? '}' : ']';
    r->pos++;
    skip_ws(r);
    if (peek(r) == close) {
        r->pos++;
        return 1;
    }
    for (;;) {
        if (object) {
            skip_ws(r);
            if (peek(r) != '"' || read_string(r, NULL) != 1) return 0;
            skip_ws(r);
            if (peek(r) != ':') return 0;
            r->pos++;
        }
        if (!skip_value(r, depth + 1)) return 0;
        skip_ws(r);
        c = peek(r);
        r->pos++;
        if (c == close) return 1;
        if (c != ',') return 0;
    }
}

int exit_is_english(const char *language, size_t len) {
    while (len && is_ws(*language)) language++, len--;
    while (len && is_ws(language[len - 1])) len--;
    char lower[8] = {0};
    for (size_t i = 0; i < len && i < sizeof lower - 1; i++) {
        char c = language[i];
        lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    if (len == 2 && memcmp(lower, "en", 2) == 0) return 1;
    if (len >= 3 && (memcmp(lower, "en-", 3) == 0 || memcmp(lower, "en_", 3) == 0)) return 1;
    return len >= 7 && memcmp(lower, "english", 7) == 0;
}

static int copy_out(const char *text, size_t len, char **out, size_t *out_len) {
    char *copy = malloc(len + 1);
    if (!copy) return -2;
    memcpy(copy, text, len);
    copy[len] = '\0';
    *out = copy;
    *out_len = len;
    return 0;
}

/* Trims Unicode-ish white space (ASCII white space and U+3000, the ideographic space) from both
 * ends and keeps at most EXIT_MAX_GOODBYE_CHARS code points, in place. */
static void trim_and_cap(buffer *b) {
    size_t start = 0, end = b->len;
    for (;;) {
        if (start < end && (is_ws(b->data[start]) || b->data[start] == '\v' || b->data[start] == '\f')) start++;
        else if (end - start >= 3 && memcmp(b->data + start, "\xE3\x80\x80", 3) == 0) start += 3;
        else break;
    }
    for (;;) {
        if (end > start && (is_ws(b->data[end - 1]) || b->data[end - 1] == '\v' || b->data[end - 1] == '\f')) end--;
        else if (end - start >= 3 && memcmp(b->data + end - 3, "\xE3\x80\x80", 3) == 0) end -= 3;
        else break;
    }
    size_t chars = 0, i = start;
    while (i < end && chars < EXIT_MAX_GOODBYE_CHARS) {
        i++;
        while (i < end && ((unsigned char)b->data[i] & 0xC0) == 0x80) i++; /* continuation bytes */
        chars++;
    }
    memmove(b->data, b->data + start, i - start);
    b->len = i - start;
    b->data[b->len] = '\0';
}

int exit_goodbye(const char *args, size_t args_len, const char *language, size_t language_len, char **out,
                 size_t *out_len, const char **error) {
    const char *fallback = exit_is_english(language, language_len) ? EXIT_DEFAULT_GOODBYE_EN : EXIT_DEFAULT_GOODBYE_ZH;
    reader r = {args, args_len, 0};
    buffer found = {NULL, 0};
    int status;

    skip_ws(&r);
    if (r.pos == r.len) return copy_out(fallback, strlen(fallback), out, out_len);
    if (peek(&r) != '{') {
        size_t at = r.pos;
        if (!skip_value(&r, 0)) goto not_json;
        skip_ws(&r);
        if (r.pos != r.len) goto not_json;
        /* `null` means no arguments, as for the Rust twin. */
        if (r.len - at >= 4 && memcmp(args + at, "null", 4) == 0) return copy_out(fallback, strlen(fallback), out, out_len);
        *error = "arguments must be a JSON object";
        return -1;
    }

    /* An object: walk its members, decoding the value of the first `say_goodbye`. */
    r.pos++;
    skip_ws(&r);
    int value_kind = 0; /* 0 missing or null, 1 string, 2 another type */
    if (peek(&r) == '}') {
        r.pos++;
    } else {
        for (;;) {
            buffer key = {NULL, 0};
            skip_ws(&r);
            if (peek(&r) != '"') goto not_json;
            status = read_string(&r, &key);
            if (status == -2) goto oom;
            if (status != 1) goto not_json;
            int wanted = value_kind == 0 && found.data == NULL && key.len == 11 && memcmp(key.data, "say_goodbye", 11) == 0;
            free(key.data);
            skip_ws(&r);
            if (peek(&r) != ':') goto not_json;
            r.pos++;
            skip_ws(&r);
            if (wanted && peek(&r) == '"') {
                status = read_string(&r, &found);
                if (status == -2) goto oom;
                if (status != 1) goto not_json;
                value_kind = 1;
            } else {
                size_t at = r.pos;
                if (!skip_value(&r, 1)) goto not_json;
                if (wanted && !(r.pos - at == 4 && memcmp(args + at, "null", 4) == 0)) value_kind = 2;
            }
            skip_ws(&r);
            int c = peek(&r);
            r.pos++;
            if (c == '}') break;
            if (c != ',') goto not_json;
        }
    }
    skip_ws(&r);
    if (r.pos != r.len) goto not_json;
    if (value_kind == 2) {
        free(found.data);
        *error = "say_goodbye must be a string";
        return -1;
    }
    if (value_kind == 1) {
        trim_and_cap(&found);
        if (found.len > 0) {
            *out = found.data;
            *out_len = found.len;
            return 0;
        }
        free(found.data);
    }
    return copy_out(fallback, strlen(fallback), out, out_len);

not_json:
    free(found.data);
    *error = "arguments are not valid JSON";
    return -1;
oom:
    free(found.data);
    return -2;
}
