"""What every config section is made of: the base class ``Section`` (a frozen pydantic model that
rejects unknown keys), the field types that read values as the YAML files write them, and the one
line that a validation failure becomes.

Numbers follow one rule in every section and in the loss's hyperparameters: an integer field
takes ``1000``, ``1e3`` or ``1000.0`` (a JSON Schema ``integer`` is any number without a fraction,
so refusing ``1e3`` here would disagree with every editor); a float field takes any number, also
``1e-4``, which YAML 1.1 reads as a string. A bool takes only true or false, a string only a
string (pydantic's lax mode would turn ``"yes"`` into true and refuse ``"1e3"``).

A range is a field constraint (``Field(gt=0)``; a list field constrains its elements), so it is
checked as the section is built and written into ``config schema``. Inside ``list[...]`` or
``... | None`` the bound comes before the converter in ``Annotated`` (``PositiveInt``), where
pydantic applies it to the number (and writes it into the schema as ``minimum``).

Every user error is one ``ValueError`` line that starts with the dotted field name
(``engine.lr: expected a value > 0, got -1.0``): ``Section.__init__`` turns pydantic's
``ValidationError`` into the first error's line (``error_line``). A rule that a validator checks
raises ``ValueError`` with its own line: a field validator's names no field (the field's path is
put in front), a section validator's names the field it is about.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic.fields import FieldInfo


def _yaml_11_number(value: Any) -> Any:
    """``1e-4`` and ``1e3`` are strings to YAML 1.1 (PyYAML); a number here."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def integer(value: Any) -> int:
    """An int, or a number without a fraction (``1e3``, ``1000.0``)."""
    number = _yaml_11_number(value)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return number


def _number(value: Any) -> float:
    number = _yaml_11_number(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(number)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


Int = Annotated[int, BeforeValidator(integer)]
Number = Annotated[float, BeforeValidator(_number)]
"""A float that may be infinite or nan (a loss's hyperparameter: its constructor checks it)."""
Float = Annotated[float, AllowInfNan(False), BeforeValidator(_number)]
"""A config field's float: finite (nan or inf is out of any range)."""
Bool = Annotated[bool, BeforeValidator(_boolean)]
Str = Annotated[str, BeforeValidator(_string)]
PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(integer)]
NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(integer)]

_PLAIN_TYPES: dict[Any, Any] = {int: Int, float: Number, bool: Bool, str: Str}


def config_type(hint: Any) -> Any:
    """``hint`` (a loss constructor's annotation: ``float | None``) with the config's conversions."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.Union[tuple(config_type(a) for a in args)]  # noqa: UP007 (built at run time)
    return _PLAIN_TYPES.get(hint, hint)


def convert(hint: Any, value: Any, name: str) -> Any:
    """``value`` converted to ``hint`` as a config field would be; ``ValueError`` naming ``name``."""
    try:
        return TypeAdapter(config_type(hint)).validate_python(value)
    except ValidationError as err:
        raise ValueError(error_line(err, None, name)) from None


class Section(BaseModel):
    """A config section: frozen (a change after loading is a validated copy, ``loader.replaced``),
    unknown keys refused, each field's doc its attribute docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    path: ClassVar[str] = ""
    """The section's dotted place in the experiment config (``data.procedural``): names its fields in errors."""

    if not typing.TYPE_CHECKING:  # hidden from mypy, which keeps checking the fields' keywords

        def __init__(self, **data: Any) -> None:
            # pydantic builds a nested section through this too: its line reaches the outer
            # section as a ``value_error`` at the section's place, passed on as it is.
            try:
                super().__init__(**data)
            except ValidationError as err:
                raise ValueError(error_line(err, type(self), type(self).path)) from None


def one_of(*options: str, expected: str = "") -> AfterValidator:
    """A string field's choices (``Annotated[Str, one_of("group", "batch")]``): another value is
    refused, expected ``group or batch`` (or ``expected``), got it."""
    text = expected or f"{', '.join(options[:-1])} or {options[-1]}"

    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"expected {text}, got {value!r}")
        return value

    return AfterValidator(check)


# ----------------------------------------------------------------------------- errors
_TYPE_ERRORS = {
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}


def error_line(err: ValidationError, model: type[BaseModel] | None, prefix: str) -> str:
    """The first error of ``err`` (raised building ``model``, the section at dotted ``prefix``)
    as one line that starts with the dotted field name."""
    error = err.errors(include_url=False)[0]
    parts = [prefix] if prefix else []
    owner, field = model, None  # the section that holds the field, and the field
    for item in error["loc"]:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
            continue
        parts.append(str(item))
        if owner is not None and field is None and item in owner.model_fields:
            field = owner.model_fields[str(item)]
            if _section_type(field) is not None:
                owner, field = _section_type(field), None
    name = ".".join(parts) or "config"
    kind, value = error["type"], error.get("input")
    if kind == "value_error":
        message = str(error["ctx"]["error"])
        # A section's own rule names its field; a field validator's message follows the field's name.
        return message if (field is None and model is not None) else f"{name}: {message}"
    if kind == "extra_forbidden" and owner is not None:
        return f"{name}: unknown key; valid keys: {', '.join(sorted(owner.model_fields))}"
    if kind in _BOUND_ERRORS and field is not None:
        return f"{name.split('[')[0]}: expected a value {describe_bounds(field_bounds(field))}, got {value}"
    if kind in _TYPE_ERRORS:
        return f"{name}: {_TYPE_ERRORS[kind]}, got {value!r}"
    return f"{name}: {error['msg']}, got {value!r}"


def _section_type(field: FieldInfo) -> type[Section] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def field_bounds(field: FieldInfo) -> dict[str, float]:
    """The bounds of a number field, or of a list field's elements: ``{"gt": 0}``, ``{"ge": 0, "le": 1}``."""
    metadata = list(field.metadata)
    for arg in typing.get_args(field.annotation):  # ``list[PositiveInt]``, ``Annotated[int, Field(ge=8), ...] | None``
        if typing.get_origin(arg) is Annotated:
            metadata += [
                m for item in arg.__metadata__ for m in (item.metadata if isinstance(item, FieldInfo) else [item])
            ]
    return {key: getattr(m, key) for m in metadata for key in ("gt", "ge", "lt", "le") if hasattr(m, key)}


def describe_bounds(bounds: dict[str, float]) -> str:
    """``> 0``, ``>= 0``, ``in [0, 1)``: how an error message states a field's range."""
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        return f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {_num(low[1])}"
    if high:
        return f"{'<' if high[0] == ')' else '<='} {_num(high[1])}"
    return "any finite number"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
