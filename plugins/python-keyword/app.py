"""A validator written in Python, built with componentize-py against wit/0.1.0: it rejects
records whose text holds a blocked word and scores the rest by how many distinct words they use.
It shows the plugin interface is not tied to Rust; the engine loads it like any component."""

import json

from wit_world import exports
from wit_world.exports.validation import Rejection, Verdicts
from wit_world.imports.types import ColumnValues_String


class Validation(exports.Validation):
    # The Datanet and config of each context the host configured.
    contexts = {}

    def configure(self, context, datanet, config):
        blocked = [w.lower() for w in json.loads(config or "{}").get("blocked", [])]
        self.contexts[context] = (datanet.text_field, blocked)

    def validate(self, context, batch):
        if context not in self.contexts:
            raise ValueError(f"context {context} was not configured")
        text_field, blocked = self.contexts[context]
        column = batch.columns[text_field].values
        if not isinstance(column, ColumnValues_String):
            raise ValueError("the text field is not a string column")
        data, offsets = column.value.data, column.value.offsets
        quality, rejections = [], []
        for row in range(batch.rows):
            text = bytes(data[offsets[row]:offsets[row + 1]]).decode("utf-8")
            words = text.lower().split()
            hit = next((w for w in blocked if w in words), None)
            if hit is not None:
                rejections.append(Rejection(row=row, reason=f"contains the blocked word {hit!r}"))
                quality.append(0.0)
            else:
                quality.append(min(1.0, len(set(words)) / 20.0))
        return Verdicts(quality=quality, rejections=rejections, rewrites=[])
