"""Field mappings: which input values feed which annotation field of the sample contract.

One syntax serves the converters (``mmtl data convert --map``) and shards without a
``dataset.json`` (``data.map``): ``FIELD=PATH[,PATH...]``. A PATH is a key, a dotted path into
nested objects and ``[N]`` / ``[]`` list steps: ``summaries=summary.outcome``,
``captions=annotations[].text``, ``document=sections[0].text``. Several paths are read in order
and joined (lists are concatenated, texts joined with a space).
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

from data_pipelines.fields import SOURCE, TEXT
from data_pipelines.sample import annotation_field, annotation_fields, file_fields
from mmtl.errors import MMTLError

# the inputs of a converted record that are not annotations: its image and its key
RECORD_INPUTS = ("image", "key")
# ``source`` names the data set a sample came from; a mapping onto it is allowed but always reported
RESERVED_FIELDS = (SOURCE.name,)

_STEP = re.compile(r"([^.\[\]]+)|\[(\d*)\]|(\.)")
Mapping = dict[str, list[str]]


def mappable_fields() -> tuple[str, ...]:
    """The fields a mapping may fill: the record's image and key, every declared annotation field, and the
    files of further modalities (depth, audio)."""
    return (*RECORD_INPUTS, *(f.name for f in annotation_fields()), *file_fields())


def parse_mapping(items: Iterable[str], option: str = "--map") -> Mapping:
    """``FIELD=PATH[,PATH...]`` items -> {field: [paths]}; raises MMTLError naming the bad item."""
    mapping: Mapping = {}
    items = list(items)
    valid = mappable_fields() if items else ()
    for item in items:
        name, sep, paths = str(item).partition("=")
        name = name.strip()
        if not sep or not paths.strip():
            raise MMTLError(f"{option} {item!r}: expected FIELD=PATH[,PATH...]")
        if name not in valid:
            raise MMTLError(f"{option} {item!r}: unknown field {name!r}; valid fields: {', '.join(valid)}")
        mapping[name] = [p.strip() for p in paths.split(",") if p.strip()]
        for path in mapping[name]:
            parse_path(path, f"{option} {item!r}")
    return mapping


def parse_path(path: str, where: str = "path") -> list[str | int | None]:
    """``a.b[0].c[]`` -> ['a', 'b', 0, 'c', None] (None: every item of a list)."""
    steps: list[str | int | None] = []
    position = 0
    for match in _STEP.finditer(path):
        if match.start() != position:
            break
        position = match.end()
        if match.group(1) is not None:
            steps.append(match.group(1))
        elif match.group(2) is not None:
            steps.append(int(match.group(2)) if match.group(2) else None)
    if position != len(path) or not steps or not isinstance(steps[0], str):
        raise MMTLError(f"{where}: cannot read path {path!r} (use keys, dots, [N] and [], e.g. annotations[].text)")
    return steps


def root_key(path: str) -> str:
    """The first key of a path (the column or member it reads)."""
    return str(parse_path(path)[0])


def lookup(value: Any, path: str) -> list[Any]:
    """Every value at ``path`` in ``value`` (a key holding the whole path literally wins); [] when absent."""
    if isinstance(value, dict) and path in value:
        return [value[path]]
    found = [value]
    for step in parse_path(path):
        found = [v for item in found for v in _step(item, step)]
    return [v for v in found if v is not None]


def _step(item: Any, step: str | int | None) -> list[Any]:
    if isinstance(step, str):
        if isinstance(item, str) and item[:1] in "{[":  # a JSON text inside a column (CSV cells, json members)
            try:
                item = json.loads(item)
            except json.JSONDecodeError:
                return []
        return [item[step]] if isinstance(item, dict) and step in item else []
    if not isinstance(item, list):
        return []
    if step is None:
        return list(item)
    return [item[step]] if -len(item) <= step < len(item) else []


def read_field(row: dict[str, Any], name: str, mapping: Mapping, split_cells: bool = False,
               consumed: frozenset[str] = frozenset()) -> tuple[Any, int]:
    """(value, null entries skipped) of annotation field ``name`` in ``row``.

    Unmapped fields read the column of their own name, unless another field's mapping already
    reads that column (``consumed``): ``--map document=source`` must not also fill ``source``.
    Each field is read as its declared kind (see :func:`field_value`).
    """
    if name in mapping:
        paths = mapping[name]
    elif name in consumed:
        return None, 0
    else:
        paths = [name]
    return field_value(name, [v for path in paths for v in lookup(row, path)], split_cells)


def field_value(name: str, values: list[Any], split_cells: bool = False) -> tuple[Any, int]:
    """The values found for field ``name`` -> (its value, null entries skipped), read as its declared kind
    (a list of strings, an int, ...; one text for the record's key). Raises
    :class:`~data_pipelines.fields.MalformedValue` for a value its kind cannot hold."""
    values = [v for v in values if v not in ("", None)]
    if not values:
        return None, 0
    field = annotation_field(name)
    return (field.kind if field is not None else TEXT).read(values, split_cells)


def consumed_columns(mapping: Mapping) -> frozenset[str]:
    """Columns that some mapping reads (their same-named fields are then not filled implicitly)."""
    return frozenset(root_key(p) for name, paths in mapping.items() for p in paths if root_key(p) != name)


def mapping_warnings(mapping: Mapping) -> list[str]:
    """Lines that say what a mapping does to a reserved field (never silently)."""
    warnings = []
    for name in RESERVED_FIELDS:
        if name in mapping:
            warnings.append(f"--map {name}={','.join(mapping[name])}: '{name}' is reserved for the data set "
                            f"name of each sample; it now holds the mapped values")
        readers = [f for f, paths in mapping.items() if f != name and any(root_key(p) == name for p in paths)]
        if readers and name not in mapping:
            warnings.append(f"column '{name}' feeds {', '.join(readers)}; the reserved field '{name}' "
                            f"(data set name) is not filled from it")
    return warnings
