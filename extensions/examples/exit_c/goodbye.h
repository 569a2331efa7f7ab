/* The handle_exit_intent tool's logic, independent of the WebAssembly bindings: its definition
 * and the farewell it returns. Compiles natively too (test_goodbye.c). */
#ifndef EXIT_C_GOODBYE_H
#define EXIT_C_GOODBYE_H

#include <stddef.h>

/* The tool's function name. */
#define EXIT_TOOL_NAME "handle_exit_intent"
/* The tool message recorded for the LLM (tool-result.result). */
#define EXIT_TOOL_RESULT "Exit intent handled"
/* Farewells spoken when the arguments give none. */
#define EXIT_DEFAULT_GOODBYE_ZH "再见，祝你有美好的一天！"
#define EXIT_DEFAULT_GOODBYE_EN "Goodbye, have a wonderful day!"
/* The longest farewell spoken, in characters (code points). */
#define EXIT_MAX_GOODBYE_CHARS 300

/* The tool's description for the LLM and the JSON schema of its arguments. */
extern const char EXIT_TOOL_DESCRIPTION[];
extern const char EXIT_TOOL_PARAMETERS_JSON[];

/* Whether a language tag or name (`en`, `en-US`, `English`, ...) means English. */
int exit_is_english(const char *language, size_t len);

/* Computes the farewell for the arguments JSON (`args`, `args_len` bytes of UTF-8): the
 * `say_goodbye` string trimmed and capped at EXIT_MAX_GOODBYE_CHARS, or the default for the
 * language when the arguments are blank, `null`, `{}`, or `say_goodbye` is null or blank.
 *
 * Returns 0 and sets *out (malloc'ed, NUL-terminated, owned by the caller) and *out_len on
 * success; returns -1 and sets *error to a static message when the arguments are not a JSON
 * object or `say_goodbye` is not a string; returns -2 when memory runs out. */
int exit_goodbye(const char *args, size_t args_len, const char *language, size_t language_len, char **out,
                 size_t *out_len, const char **error);

#endif
