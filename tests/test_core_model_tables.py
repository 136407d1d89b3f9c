"""Lint of the model and the CT.gov table: every model field is mapped, every enum exists."""

from __future__ import annotations

import dataclasses
import inspect

from trialbridge import model
from trialbridge.sdtm.metadata import known_domains, load_domain
from trialbridge.specs import ctgov_enums, load_spec, load_table, mapping_text


def _model_classes():
    return {name: cls for name, cls in inspect.getmembers(model, inspect.isclass)
            if dataclasses.is_dataclass(cls) and cls.__module__ == model.__name__}


def test_every_model_field_has_a_ctgov_path_and_nothing_else_is_listed():
    table = load_spec("ctgov_v2.yaml")["classes"]
    classes = _model_classes()
    assert set(table) == set(classes)
    for name, cls in classes.items():
        assert [f.name for f in dataclasses.fields(cls)] == list(table[name]), name


def test_every_enum_the_table_names_exists():
    enums = ctgov_enums()
    for cls, fields in load_spec("ctgov_v2.yaml")["classes"].items():
        for field, entry in fields.items():
            if isinstance(entry, dict) and "enum" in entry:
                assert entry["enum"] in enums, (cls, field)


def test_code_tables_cite_their_source():
    assert mapping_text("codes/ctgov_enums.csv").startswith("# source:")
    assert load_table("codes/ctgov_enums.csv")


def test_sdtm_metadata_is_well_formed_for_every_domain():
    from importlib import resources
    folder = resources.files("trialbridge.schemas").joinpath("sdtm")
    domains = known_domains()
    assert {"TS", "TA", "TE", "TV", "TI", "DM", "VS", "LB", "AE", "CM", "EX", "MH", "PR", "SV",
            "DS", "SUPPQUAL"} <= set(domains)
    for dom in domains:
        if not folder.joinpath(f"{dom.lower()}.csv").is_file():
            continue  # SE has no writer yet; every domain a writer uses is loaded by its tests
        meta = load_domain(dom)
        names = meta.names
        assert len(names) == len(set(names)), dom
        assert names[0] == "STUDYID", dom
        assert set(meta.keys) <= set(names), (dom, set(meta.keys) - set(names))
        for var in meta.variables:
            assert len(var.name) <= 8 and var.name.isupper(), (dom, var.name)
            assert 0 < len(var.label) <= 40, (dom, var.name)
            assert var.type in ("Char", "Num"), (dom, var.name)
            assert var.data_type in ("string", "integer", "float", "double", "decimal", "date",
                                     "datetime", "time", "boolean"), (dom, var.name)
            assert var.core in ("Req", "Exp", "Perm"), (dom, var.name)
            assert (var.type == "Num") == (var.data_type in ("integer", "float", "double",
                                                               "decimal")), (dom, var.name)
