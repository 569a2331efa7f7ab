"""Native unit tests of app.py (build.sh runs them with the generated bindings on the path)."""

import json
import unittest

import app


class GoodbyeTest(unittest.TestCase):
    def test_uses_the_given_farewell(self):
        self.assertEqual(app.goodbye('{"say_goodbye":"  拜拜，下次见！ "}', "zh-CN"), "拜拜，下次见！")
        self.assertEqual(app.goodbye('{"say_goodbye":"See you","extra":1}', "en"), "See you")

    def test_defaults_follow_the_language(self):
        for arguments in ["", " ", "null", "{}", '{"say_goodbye":null}', '{"say_goodbye":"   "}']:
            self.assertEqual(app.goodbye(arguments, "zh-CN"), app.DEFAULT_GOODBYE_ZH, arguments)
            self.assertEqual(app.goodbye(arguments, "en-US"), app.DEFAULT_GOODBYE_EN, arguments)
        self.assertTrue(app.is_english("English"))
        self.assertFalse(app.is_english("中文"))

    def test_rejects_bad_arguments(self):
        for arguments in ["[1]", "{not json", '{"say_goodbye":42}', "[" * 100000]:
            with self.assertRaises((ValueError, RecursionError), msg=arguments[:20]):
                app.goodbye(arguments, "zh")

    def test_caps_long_farewells(self):
        text = app.goodbye(json.dumps({"say_goodbye": "再" * (app.MAX_GOODBYE_CHARS + 50)}), "zh")
        self.assertEqual(len(text), app.MAX_GOODBYE_CHARS)

    def test_the_tool_answers_like_the_rust_twin(self):
        tool = app.Tool()
        [definition] = tool.describe()
        self.assertEqual(definition.name, "handle_exit_intent")
        schema = json.loads(definition.parameters_json)
        self.assertEqual(schema["required"], ["say_goodbye"])
        context = app.types.CallContext(device_id="d", session_id="s", language="en")
        result = tool.call("handle_exit_intent", '{"say_goodbye":"Bye now"}', context)
        speak, note, end = result.effects
        self.assertIsInstance(speak, app.types.Effect_Speak)
        self.assertEqual(speak.value, "Bye now")
        self.assertIsInstance(note, app.types.Effect_Note)
        self.assertIsInstance(end, app.types.Effect_EndConversation)
        with self.assertRaises(app.Err) as caught:
            tool.call("handle_exit_intent", "{not json", context)
        self.assertIsInstance(caught.exception.value, app.types.ExtensionError_InvalidArguments)
        with self.assertRaises(app.Err) as caught:
            tool.call("other", "{}", context)
        self.assertIsInstance(caught.exception.value, app.types.ExtensionError_NotFound)


if __name__ == "__main__":
    unittest.main()
