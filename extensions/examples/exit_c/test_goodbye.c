/* Native unit tests of goodbye.c (build.sh runs them with the host's C compiler). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "goodbye.h"

static int failures = 0;

static void expect(const char *args, const char *language, int status, const char *text) {
    char *out = NULL;
    size_t len = 0;
    const char *error = NULL;
    int got = exit_goodbye(args, strlen(args), language, strlen(language), &out, &len, &error);
    if (got != status || (status == 0 && (strlen(text) != len || memcmp(out, text, len) != 0))) {
        fprintf(stderr, "FAIL: %s (%s): status %d, text %s, error %s\n", args, language, got, out ? out : "-",
                error ? error : "-");
        failures++;
    }
    free(out);
}

int main(void) {
    expect("{\"say_goodbye\":\"Bye now\"}", "en", 0, "Bye now");
    expect("{\"say_goodbye\":\"  拜拜，下次见！ \"}", "zh-CN", 0, "拜拜，下次见！");
    expect("{\"extra\":[1,{\"a\":null}],\"say_goodbye\":\"See you\",\"n\":-1.5e3}", "en", 0, "See you");
    expect("{\"say_goodbye\":\"\\u518d\\u89c1\\n\\ud83d\\ude00\"}", "zh", 0, "再见\n😀");
    const char *blanks[] = {"", " ", "null", "{}", "{\"say_goodbye\":null}", "{\"say_goodbye\":\"   \"}",
                            "{\"say_goodbye\":\"\\u3000\"}"};
    for (size_t i = 0; i < sizeof blanks / sizeof *blanks; i++) {
        expect(blanks[i], "zh-CN", 0, EXIT_DEFAULT_GOODBYE_ZH);
        expect(blanks[i], "en-US", 0, EXIT_DEFAULT_GOODBYE_EN);
        expect(blanks[i], "English", 0, EXIT_DEFAULT_GOODBYE_EN);
    }
    const char *bad[] = {"{not json", "[1]", "42", "{\"say_goodbye\":42}", "{\"say_goodbye\":\"x\"", "{\"a\":1,}",
                         "{\"say_goodbye\":\"x\"} trailing", "{\"a\":tru}", "\"text\"", "{\"a\":\"\\x\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) expect(bad[i], "en", -1, NULL);

    /* Deep nesting is refused, not recursed into without bound. */
    char deep[400];
    size_t n = 0;
    n += (size_t)sprintf(deep, "{\"a\":");
    for (int i = 0; i < 100; i++) deep[n++] = '[';
    for (int i = 0; i < 100; i++) deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = '\0';
    expect(deep, "en", -1, NULL);

    /* Long farewells are capped at EXIT_MAX_GOODBYE_CHARS code points. */
    size_t count = EXIT_MAX_GOODBYE_CHARS + 50;
    char *args = malloc(count * 3 + 32), *want = malloc(EXIT_MAX_GOODBYE_CHARS * 3 + 1);
    if (!args || !want) return 2;
    n = (size_t)sprintf(args, "{\"say_goodbye\":\"");
    for (size_t i = 0; i < count; i++) memcpy(args + n, "再", 3), n += 3;
    strcpy(args + n, "\"}");
    for (size_t i = 0; i < EXIT_MAX_GOODBYE_CHARS; i++) memcpy(want + 3 * i, "再", 3);
    want[EXIT_MAX_GOODBYE_CHARS * 3] = '\0';
    expect(args, "zh", 0, want);
    free(args);
    free(want);

    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("goodbye.c: all tests passed\n");
    return 0;
}
