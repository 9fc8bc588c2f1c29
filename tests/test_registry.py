"""The backbone registry: names, aliases, loud failures, and telling a state_dict's network."""

from __future__ import annotations

import pytest
import torch

from kface_cli.errors import KFaceError, ModelMismatchError
from kface_cli.models import registry
from kface_cli.models.registry import canonical_name, get_backbone, infer_embedding_size, infer_network, list_backbones


def test_contract_names_and_aliases():
    names = list_backbones()
    for n in ("r18", "r34", "r50", "r100", "r200", "mbf"):
        assert n in names
    assert canonical_name("iresnet50") == "r50"
    assert canonical_name("MobileFaceNet") == "mbf"


def test_unknown_name_lists_valid_names():
    with pytest.raises(KFaceError) as e:
        get_backbone("r51")
    msg = str(e.value)
    assert "r51" in msg and "r50" in msg and "mbf" in msg


def test_unknown_option_is_rejected_with_valid_fields():
    with pytest.raises(KFaceError) as e:
        get_backbone("r18", dropuot=0.1)
    assert "dropout" in str(e.value)


def test_duplicate_registration_is_rejected():
    list_backbones()  # make sure the built-ins are registered
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backbone("r18")(lambda embedding_size=512: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backbone("brand_new", aliases=("iresnet50",))(lambda embedding_size=512: None)
    assert "brand_new" not in list_backbones()


@pytest.mark.parametrize("name,emb", [("r18", 512), ("r50", 256), ("r100", 512), ("mbf", 128), ("mbf_small", 64)])
def test_infer_network_from_state_dict(name, emb):
    with torch.device("meta"):
        sd = get_backbone(name, embedding_size=emb).state_dict()
    assert infer_network(sd) == name
    assert infer_embedding_size(sd) == emb


def test_infer_network_rejects_foreign_state_dict():
    with torch.device("meta"):
        sd = get_backbone("r18").state_dict()
    del sd["layer4.1.conv2.weight"]
    with pytest.raises(ModelMismatchError) as e:
        infer_network(sd)
    assert "r18" in str(e.value)  # the closest candidate is named


def test_backbone_names_for_help_texts_are_the_registered_ones():
    assert registry.list_backbones() == list(registry.BACKBONE_NAMES)
    assert registry.backbone_names() == "mbf, mbf_small, r18, r34, r50, r100, r200"
