"""Shopify's Admin GraphQL schema for the tests: loading it, a query's cost by Shopify's
documented rules, and the deprecated parts a query uses.

The schemas in `fixtures/shopify/` are derived from the full ones (see `derive.py`
there); the full ones are used too when `../shared/reference/shopify/` is present.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    build_client_schema,
    get_named_type,
    is_leaf_type,
    value_from_ast_untyped,
    visit,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "shopify"
FULL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "shopify"
VERSIONS = ("2025-10", "2026-10")


@cache
def schema(version: str) -> GraphQLSchema:
    """The derived schema of `version` (what cartd's documents use, with deprecations)."""
    return build_client_schema(derived_introspection(version), assume_valid=True)


def derived_introspection(version: str) -> dict[str, Any]:
    with gzip.open(FIXTURES / f"admin_{version}.cartd.json.gz") as raw:
        return json.load(raw)["data"]


@cache
def full_introspection(version: str) -> dict[str, Any] | None:
    path = FULL / f"admin_{version}.json.gz"
    if not path.exists():
        return None
    with gzip.open(path) as raw:
        return json.load(raw)["data"]


@cache
def full_schema(version: str) -> GraphQLSchema | None:
    introspection = full_introspection(version)
    return None if introspection is None else build_client_schema(introspection, assume_valid=True)


def _operation(document: DocumentNode) -> OperationDefinitionNode:
    return next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))


class _Selections:
    """The fields of a selection set, fragments spread, for one object type."""

    def __init__(self, schema: GraphQLSchema, document: DocumentNode) -> None:
        self.schema = schema
        self.fragments = {d.name.value: d for d in document.definitions
                          if isinstance(d, FragmentDefinitionNode)}

    def fields(self, selection: SelectionSetNode | None, kind: Any) -> list[tuple[FieldNode, Any]]:
        """(field, the type it is selected on: a fragment's type, or `kind`)."""
        out: list[tuple[FieldNode, Any]] = []
        for node in selection.selections if selection else ():
            if isinstance(node, FieldNode):
                out.append((node, kind))
                continue
            if isinstance(node, InlineFragmentNode):
                condition, inner = node.type_condition, node.selection_set
            elif isinstance(node, FragmentSpreadNode):
                fragment = self.fragments[node.name.value]
                condition, inner = fragment.type_condition, fragment.selection_set
            else:
                continue
            if condition is None:
                out += self.fields(inner, kind)
            elif self._applies(condition.name.value, kind):
                owner = kind if isinstance(kind, GraphQLObjectType) else self.schema.get_type(
                    condition.name.value)
                out += self.fields(inner, owner)
        return out

    @staticmethod
    def _applies(condition: str, kind: Any) -> bool:
        """Whether a fragment on `condition` applies to `kind` (for an abstract `kind`, the
        requested cost counts every fragment)."""
        if not isinstance(kind, GraphQLObjectType):
            return True
        return condition == kind.name or condition in {i.name for i in kind.interfaces}


@cache
def _is_connection(kind: Any) -> bool:
    return isinstance(kind, GraphQLObjectType) and kind.name.endswith("Connection")


def requested_cost(schema: GraphQLSchema, document: DocumentNode, variables: dict[str, Any]) -> int:
    """Shopify's requested cost: scalars and enums 0, objects 1, a connection 2 + `first`
    (or `last`) x the cost of one node's selection."""
    selections = _Selections(schema, document)

    def cost(selection: SelectionSetNode | None, kind: Any) -> int:
        total = 0
        for node, owner in selections.fields(selection, kind):
            field = getattr(owner, "fields", {}).get(node.name.value)
            if field is None:
                continue
            inner = get_named_type(field.type)
            if is_leaf_type(inner):
                continue
            if _is_connection(inner):
                args = _arguments(node, variables)
                size = args.get("first") or args.get("last") or 0
                for part, _ in selections.fields(node.selection_set, inner):
                    part_kind = get_named_type(inner.fields[part.name.value].type)
                    if part.name.value in ("nodes", "edges"):
                        total += size * cost(part.selection_set, part_kind)
                    elif not is_leaf_type(part_kind):
                        total += 1 + cost(part.selection_set, part_kind)
                total += 2
            else:
                total += 1 + cost(node.selection_set, inner)
        return total

    return cost(_operation(document).selection_set, schema.query_type)


def _arguments(node: FieldNode, variables: dict[str, Any]) -> dict[str, Any]:
    return {arg.name.value: value_from_ast_untyped(arg.value, variables) for arg in node.arguments}


LEAF, NON_NULL_LEAF = 1, 2


class Executor:
    """Runs a validated query over plain data, as a GraphQL server would: only what is
    selected is returned, a null where the schema forbids one is an error, a field whose
    value is callable is called with the field's arguments. Also counts the actual cost
    (the requested cost's rules over what was returned)."""

    def __init__(self, schema: GraphQLSchema, document: DocumentNode,
                 variables: dict[str, Any]) -> None:
        self.schema, self.document, self.variables = schema, document, variables
        self.selections = _Selections(schema, document)
        self.cost = 0
        self.plans: dict[tuple[int, str], list[tuple[str, str, Any, FieldNode, int, int]]] = {}

    def run(self, root: dict[str, Any]) -> dict[str, Any]:
        return self._object(_operation(self.document).selection_set, self.schema.query_type, root)

    def _plan(self, selection: SelectionSetNode | None, kind: GraphQLObjectType
              ) -> list[tuple[str, str, Any, FieldNode, int, int]]:
        """Per field: (response key, field name, its type, node, cost of each object in it,
        LEAF or NON_NULL_LEAF for a scalar or enum field, else 0)."""
        key = (id(selection), kind.name)
        plan = self.plans.get(key)
        if plan is None:
            plan = []
            for node, _ in self.selections.fields(selection, kind):
                name = node.name.value
                each = 0 if _is_connection(kind) and name in ("nodes", "edges") else 1
                field_type = None if name == "__typename" else kind.fields[name].type
                leaf = 0
                if field_type is not None and is_leaf_type(get_named_type(field_type)) and not (
                        isinstance(getattr(field_type, "of_type", None), GraphQLList)
                        or isinstance(field_type, GraphQLList)):
                    leaf = NON_NULL_LEAF if isinstance(field_type, GraphQLNonNull) else LEAF
                plan.append((node.alias.value if node.alias else name, name, field_type, node,
                             each, leaf))
            self.plans[key] = plan
        return plan

    def _object(self, selection: SelectionSetNode | None, kind: GraphQLObjectType,
                source: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, name, field_type, node, each, leaf in self._plan(selection, kind):
            if field_type is None:
                out[key] = kind.name
                continue
            value = source.get(name)
            if callable(value):
                value = value(**_arguments(node, self.variables))
            if leaf and (value is not None or leaf == LEAF):
                out[key] = value
            else:
                out[key] = self._complete(field_type, node, value, kind, each)
        return out

    def _complete(self, kind: Any, node: FieldNode, value: Any, owner: Any, each: int) -> Any:
        if isinstance(kind, GraphQLNonNull):
            if value is None:
                raise GraphQLError(
                    f"Cannot return null for non-nullable field {owner.name}.{node.name.value}.")
            kind = kind.of_type
        if value is None or isinstance(kind, GraphQLScalarType | GraphQLEnumType):
            return value
        if isinstance(kind, GraphQLList):
            return [self._complete(kind.of_type, node, item, owner, each) for item in value]
        concrete = kind if isinstance(kind, GraphQLObjectType) else self.schema.get_type(
            value["__typename"])
        self.cost += 2 if _is_connection(concrete) else each
        return self._object(node.selection_set, concrete, value)


class _Deprecated(Visitor):
    def __init__(self, type_info: TypeInfo) -> None:
        super().__init__()
        self.type_info = type_info
        self.found: list[str] = []

    def enter_field(self, node: FieldNode, *_: Any) -> None:
        field = self.type_info.get_field_def()
        if field is not None and field.deprecation_reason:
            parent = get_named_type(self.type_info.get_parent_type())
            self.found.append(f"{parent.name}.{node.name.value}: {field.deprecation_reason}")

    def enter_argument(self, node: Any, *_: Any) -> None:
        arg = self.type_info.get_argument()
        if arg is not None and arg.deprecation_reason:
            self.found.append(f"argument {node.name.value}: {arg.deprecation_reason}")

    def enter_enum_value(self, node: Any, *_: Any) -> None:
        value = self.type_info.get_enum_value()
        if value is not None and value.deprecation_reason:
            self.found.append(f"enum value {node.value}: {value.deprecation_reason}")


def deprecated_uses(schema: GraphQLSchema, document: DocumentNode) -> list[str]:
    found = _Deprecated(TypeInfo(schema))
    visit(document, TypeInfoVisitor(found.type_info, found))
    return found.found
