"""A minimal TOML writer for the config's shapes (tests only: the tests write config copies)."""

import json


def to_toml(raw: dict) -> str:  # type: ignore[type-arg]
    """``raw`` (a config as read by tomllib) as TOML text."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for section in ("project", "catalogue", "labels", "split", "model", "train", "evaluate"):
        if section in raw:
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in raw[section].items()]
    for f in raw["context"]["fields"]:
        lines.append("[[context.fields]]")
        lines += [f"{k} = {value(v)}" for k, v in f.items()]
    for group in ("objectives", "canvases"):
        for name, body in raw[group].items():
            lines.append(f"[{group}.{name}]")
            lines += [f"{k} = {value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"
