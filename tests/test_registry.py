import pytest

from compress.errors import RegistryError
from compress.losses import LOSSES
from compress.registry import Registry
from compress.stages import STAGES


def test_failed_lookup_lists_what_exists_and_suggests() -> None:
    with pytest.raises(RegistryError, match=r"unknown stage 'distil'. Did you mean 'distill'\? Known: .*export"):
        STAGES.get("distil")
    known = ("Known: attention_map, attention_output, ce, fkl, hidden, jsd, kd, l1_cosine, minilm, rkd, rkl, sinkd, "
             "skl, srkl, taid")
    with pytest.raises(RegistryError, match=known):
        LOSSES.get("nope")


def test_duplicate_registration_is_refused() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 2)
