"""The `exit_py` xiaozhi extension: the `handle_exit_intent` tool written in Python.

A WebAssembly component (world `xiaozhi:extension/tool-extension@0.2.0`) built with
componentize-py by `build.sh`. It behaves like the Rust extension `extensions/handle_exit_intent`:
the LLM calls the tool when the user wants to end the conversation, and the tool answers with
three effects: speak the farewell, note the result in the dialogue, end the conversation.

The logic (`goodbye`) is plain Python and can be tried without WebAssembly:
`python3 -c 'import app; print(app.goodbye("{\\"say_goodbye\\": \\"Bye\\"}", "en"))'`
works once the bindings exist (`build.sh` generates them into `build/`).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

NAME = "handle_exit_intent"
DESCRIPTION = (
    "用户明确要结束对话或退出系统时调用（例如“退出”“再见，不聊了”“结束对话”）。"
    "调用后会说出告别语并结束本次对话、关闭连接；用户只是询问如何退出时不要调用。"
    "Call this when the user explicitly wants to end the conversation or exit. It speaks the farewell "
    "and then ENDS the conversation (the session is closed); do not call it when the user merely asks "
    "how exiting works."
)
PARAMETERS_JSON = json.dumps(
    {
        "type": "object",
        "properties": {
            "say_goodbye": {
                "type": "string",
                "description": "A short, friendly farewell to the user, in the user's language; "
                "it is spoken before the conversation ends.",
            }
        },
        "required": ["say_goodbye"],
    },
    ensure_ascii=False,
    separators=(",", ":"),
)
RESULT = "Exit intent handled"
DEFAULT_GOODBYE_ZH = "再见，祝你有美好的一天！"
DEFAULT_GOODBYE_EN = "Goodbye, have a wonderful day!"
MAX_GOODBYE_CHARS = 300


def is_english(language: str) -> bool:
    """Whether a call's language tag or name (`en`, `en-US`, `English`, ...) means English."""
    lower = language.strip().lower()
    return lower == "en" or lower.startswith(("en-", "en_", "english"))


def goodbye(arguments_json: str, language: str) -> str:
    """The farewell for the arguments JSON: `say_goodbye` trimmed and capped at
    MAX_GOODBYE_CHARS, or the default for `language` when it is missing, null or blank.

    Raises ValueError when the text is not a JSON object or `say_goodbye` is not a string.
    """
    default = DEFAULT_GOODBYE_EN if is_english(language) else DEFAULT_GOODBYE_ZH
    if not arguments_json.strip():
        return default
    try:
        value = json.loads(arguments_json)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"arguments are not valid JSON: {error}") from None
    if value is None:
        return default
    if not isinstance(value, dict):
        raise ValueError("arguments must be a JSON object")
    text = value.get("say_goodbye")
    if text is None:
        return default
    if not isinstance(text, str):
        raise ValueError(f"say_goodbye must be a string, got {json.dumps(text)}")
    text = text.strip()
    return text[:MAX_GOODBYE_CHARS] if text else default


class Tool(exports.Tool):
    """The exported `xiaozhi:extension/tool@0.2.0` interface."""

    def describe(self) -> list[types.ToolDefinition]:
        return [types.ToolDefinition(name=NAME, description=DESCRIPTION, parameters_json=PARAMETERS_JSON)]

    def call(self, name: str, arguments_json: str, context: types.CallContext) -> types.ToolResult:
        if name != NAME:
            raise Err(types.ExtensionError_NotFound(f"unknown tool {name!r}"))
        try:
            farewell = goodbye(arguments_json, context.language)
        except (ValueError, RecursionError) as error:
            raise Err(types.ExtensionError_InvalidArguments(str(error))) from None
        # Speak the farewell, note the result in the dialogue, end the conversation.
        return types.ToolResult(
            effects=[types.Effect_Speak(farewell), types.Effect_Note(RESULT), types.Effect_EndConversation()]
        )
