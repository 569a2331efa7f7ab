/* The exit_c xiaozhi extension: the handle_exit_intent tool written in C.
 *
 * A WebAssembly component exporting xiaozhi:extension/tool@0.2.0 (world wit/world.wit), built by
 * build.sh with wit-bindgen c, clang and wasm-tools. It behaves like the Rust extension
 * extensions/handle_exit_intent: the LLM calls the tool when the user wants to end the
 * conversation, and the tool answers with three effects: speak the farewell, note the result in
 * the dialogue, end the conversation. The logic lives in goodbye.c.
 *
 * Ownership follows wit-bindgen's C conventions: the arguments belong to the callee (freed
 * here), and every string returned is malloc'ed (the generated post-return code frees it). */
#include <stdlib.h>
#include <string.h>

#include "exit_tool.h"
#include "goodbye.h"

typedef exports_xiaozhi_extension_tool_tool_definition_t tool_definition_t;

void exports_xiaozhi_extension_tool_describe(exports_xiaozhi_extension_tool_list_tool_definition_t *ret) {
    tool_definition_t *def = calloc(1, sizeof *def);
    if (!def) abort();
    exit_tool_string_dup(&def->name, EXIT_TOOL_NAME);
    exit_tool_string_dup(&def->description, EXIT_TOOL_DESCRIPTION);
    exit_tool_string_dup(&def->parameters_json, EXIT_TOOL_PARAMETERS_JSON);
    ret->ptr = def;
    ret->len = 1;
}

/* Sets *err to the error case `tag` with `message` (copied). */
static bool fail(exports_xiaozhi_extension_tool_extension_error_t *err, uint8_t tag, const char *message) {
    err->tag = tag;
    /* Every case carries a string at the same place of the union. */
    exit_tool_string_dup(&err->val.failed, message);
    return false;
}

bool exports_xiaozhi_extension_tool_call(exit_tool_string_t *name, exit_tool_string_t *arguments_json,
                                         exports_xiaozhi_extension_tool_call_context_t *context,
                                         exports_xiaozhi_extension_tool_tool_result_t *ret,
                                         exports_xiaozhi_extension_tool_extension_error_t *err) {
    bool ok;
    size_t name_len = strlen(EXIT_TOOL_NAME);
    if (name->len != name_len || memcmp(name->ptr, EXIT_TOOL_NAME, name_len) != 0) {
        ok = fail(err, XIAOZHI_EXTENSION_TYPES_EXTENSION_ERROR_NOT_FOUND, "unknown tool");
    } else {
        char *farewell = NULL;
        size_t farewell_len = 0;
        const char *error = NULL;
        int status = exit_goodbye((const char *)arguments_json->ptr, arguments_json->len,
                                  (const char *)context->language.ptr, context->language.len, &farewell,
                                  &farewell_len, &error);
        if (status == 0) {
            xiaozhi_extension_types_effect_t *effects = calloc(3, sizeof *effects);
            if (!effects) abort();
            effects[0].tag = XIAOZHI_EXTENSION_TYPES_EFFECT_SPEAK;
            effects[0].val.speak.ptr = (uint8_t *)farewell; /* malloc'ed: the post-return code frees it */
            effects[0].val.speak.len = farewell_len;
            effects[1].tag = XIAOZHI_EXTENSION_TYPES_EFFECT_NOTE;
            exit_tool_string_dup(&effects[1].val.note, EXIT_TOOL_RESULT);
            effects[2].tag = XIAOZHI_EXTENSION_TYPES_EFFECT_END_CONVERSATION;
            ret->effects.ptr = effects;
            ret->effects.len = 3;
            ok = true;
        } else if (status == -1) {
            ok = fail(err, XIAOZHI_EXTENSION_TYPES_EXTENSION_ERROR_INVALID_ARGUMENTS, error);
        } else {
            ok = fail(err, XIAOZHI_EXTENSION_TYPES_EXTENSION_ERROR_FAILED, "out of memory");
        }
    }
    exit_tool_string_free(name);
    exit_tool_string_free(arguments_json);
    exports_xiaozhi_extension_tool_call_context_free(context);
    return ok;
}
