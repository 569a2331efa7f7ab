#!/usr/bin/env python3
"""Smoke-test a tool extension component outside the server.

Loads a component built for `xiaozhi:extension/tool-extension@0.1.0` with Wasmtime's Python
bindings, links WASI 0.2 (no preopened directories, no environment), calls `describe` and then
`call` for each tool with the given arguments, and prints the results. The xiaozhi host
interfaces (log, config, kv, http, llm) are not provided, so only components that import none
of them can be tested (the server-side host is not written yet).

    pip install wasmtime==50.0.1
    python3 extensions/tool-smoke.py extensions/get_time/get_time.wasm '{}' '{"timezone_offset_minutes": -300}'

Exits with status 1 when the component does not load, `describe` returns nothing, or a call
fails with an error.
"""

import sys
import time

try:
    import wasmtime
    from wasmtime import component
except ImportError:
    sys.exit("tool-smoke.py: the `wasmtime` Python package is missing (pip install wasmtime==50.0.1)")

INTERFACE = "xiaozhi:extension/tool@0.1.0"


def fields(value):
    """A component value as plain Python data, for printing."""
    if isinstance(value, list):
        return [fields(item) for item in value]
    if isinstance(value, component.Variant):
        return {"error": value.tag, "message": fields(value.payload)}
    if hasattr(value, "__dict__"):
        return {name: fields(item) for name, item in vars(value).items()}
    return value


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    path, argument_sets = argv[1], argv[2:] or ["{}"]

    engine = wasmtime.Engine()
    started = time.perf_counter()
    loaded = component.Component.from_file(engine, path)
    print(f"compiled {path} in {(time.perf_counter() - started) * 1000:.1f} ms")
    linker = component.Linker(engine)
    linker.add_wasip2()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    try:
        instance = linker.instantiate(store, loaded)
    except wasmtime.WasmtimeError as error:
        print(f"tool-smoke.py: cannot instantiate {path}: {error}", file=sys.stderr)
        return 1

    interface = instance.get_export_index(store, INTERFACE)
    if interface is None:
        print(f"tool-smoke.py: {path} does not export {INTERFACE}", file=sys.stderr)
        return 1

    def export(name):
        index = instance.get_export_index(store, name, interface)
        if index is None:
            raise SystemExit(f"tool-smoke.py: {INTERFACE} has no function {name}")
        return instance.get_func(store, index)

    describe, call = export("describe"), export("call")
    tools = describe(store)
    if not tools:
        print("tool-smoke.py: describe() returned no tools", file=sys.stderr)
        return 1
    context = component.Record()
    setattr(context, "device-id", "00:00:00:00:00:00")
    setattr(context, "session-id", "tool-smoke")
    context.language = "zh-CN"

    status = 0
    for tool in tools:
        print(f"tool {tool.name}: {fields(tool)}")
        for arguments in argument_sets:
            started = time.perf_counter()
            result = call(store, tool.name, arguments, context)
            elapsed = (time.perf_counter() - started) * 1000
            print(f"  call({tool.name}, {arguments}) in {elapsed:.2f} ms -> {fields(result)}")
            if isinstance(result, component.Variant):
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
