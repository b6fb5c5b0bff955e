"""What a stage config's `check` sees of the recipe around it (`StageConfig.check`): the family answers what the
chain's models are, so a check asks instead of testing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from compress.data.config import DataConfig
from compress.errors import CompressError
from compress.families.base import Family

if TYPE_CHECKING:
    from compress.families.methods import Method
    from compress.graphs import Graph

T = TypeVar("T")


@dataclass
class Chain:
    """What a stage config's `check` sees of the recipe around it, before any model exists: the teacher's family
    and source kind, the data, the stages before it and the MoE models they made. ``key`` names the stage
    (`stages[2]`) in the problems a check returns."""

    family: Family
    kind: str
    teacher: str  # the teacher's source, as errors name it
    data: DataConfig
    key: str = ""
    architecture: str | None = None  # the teacher's Hugging Face model type, when its config is readable here
    before: list[Any] = field(default_factory=list)  # the stage configs before it
    moe: set[str] = field(default_factory=set)

    @property
    def member(self) -> str:
        return f"this teacher ({self.teacher}, {self.family.name} family)"  # `not_yet` names its model type

    def supports(self, capability: str) -> bool:
        return self.family.supports(capability, self.kind, self.architecture)

    def alternatives(self, capability: str) -> list[str]:
        """The other methods of ``capability``'s stage that the teacher's kind and architecture have."""
        return self.family.alternatives(capability, self.kind, self.architecture)

    def implementation(self, method: Method[T]) -> T | None:
        """The implementation of ``method`` the teacher's kind and architecture get (None: not registered)."""
        from compress.families.methods import implementation

        return implementation(method, self.family.name, self.kind, self.architecture)

    def not_yet(self, capability: str) -> str:
        """Why a method the teacher's kind has does not run on its architecture (empty when it does, or when the
        kind has no such method at all): ` (not yet for model type distilbert: it runs on bert, roberta, ...)`."""
        from compress.families.methods import architectures_of

        if (self.architecture is None or self.supports(capability)
                or not self.family.supports(capability, self.kind)):  # fmt: skip
            return ""
        on = ", ".join(architectures_of(capability, self.family.name) or ())
        return f" (not yet for model type {self.architecture}: it runs on {on})"

    def graph(self, models: list[str]) -> tuple[Graph, str]:
        """The graph the named models deploy as, and the one a refusal names: the family answers, told whether
        one of them has Mixture-of-Experts layers (made by an earlier `moefy`)."""
        moe = sorted(self.moe & set(models))
        return self.family.deploy_graph(moe=bool(moe)), (moe or models or ["teacher"])[0]

    def space_problem(self, space: Any) -> str | None:
        """Why a search space does not fit the teacher's family (None when it does)."""
        want = self.family.space_kind
        if space is None or want is None or space.kind == want:
            return None
        return f"a {space.kind} space does not fit {self.member}; give a {want} space."

    def refusal(self, fn: Callable[[], object]) -> list[str]:
        """Run a rule the stage also runs on its model (a graph's, a family's): its error as a problem."""
        try:
            fn()
        except CompressError as exc:
            return [str(exc)]
        return []
