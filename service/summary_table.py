"""The layer table of the model's `summary` metadata, as text like Keras' model.summary()."""

from typing import Any


def render_summary(summary: dict[str, Any], title: str) -> str:
    rows = [("Layer (type)", "Output Shape", "Param #")]
    rows += [
        (
            f"{layer['name']} ({layer['type']})",
            "(" + ", ".join("None" if d is None else str(d) for d in layer["output_shape"]) + ")",
            f"{layer['params']:,}",
        )
        for layer in summary["layers"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]

    def line(row: tuple[str, str, str]) -> str:
        return f"{row[0]:<{widths[0]}}   {row[1]:<{widths[1]}}   {row[2]:>{widths[2]}}"

    rule = "-" * len(line(rows[0]))
    return "\n".join(
        [
            f'Model: "{title}"',
            rule,
            line(rows[0]),
            rule.replace("-", "="),
            *(line(row) for row in rows[1:]),
            rule,
            f" Total params: {summary['total_params']:,}",
            f" Trainable params: {summary['trainable_params']:,}",
            f" Non-trainable params: {summary['non_trainable_params']:,}",
            "",
        ]
    )
