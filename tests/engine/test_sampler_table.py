"""SAMPLER_TABLE drives the CLI, requests, PNG metadata and the app's choices."""

import pytest

from studio.cli import main
from studio.engine.images import format_parameters, parse_parameters, read_parameters
from studio.engine.pipeline import validate
from studio.engine.request import GenerationRequest, RequestError
from studio.engine.samplers import SAMPLER_TABLE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_runs_a_new_sampler_and_names_it_as_a1111_does(tmp_path):
    out = tmp_path / "x.png"
    argv = ["generate", "--model", "tiny-random", "--sampler", "heun", "--karras", "--steps", "4", "--width", "64",
            "--height", "64", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    text = read_parameters(out)
    assert "Steps: 4, Sampler: Heun Karras," in text and "Eta: 0" in text
    settings = parse_parameters(text)
    assert (settings["sampler"], settings["karras"], settings["steps"]) == ("heun", True, 4)


def test_cli_gives_a_stochastic_sampler_its_default_eta(tmp_path):
    out = tmp_path / "sde.png"
    argv = ["generate", "--model", "tiny-random", "--sampler", "dpmpp_2m_sde", "--steps", "3", "--out", str(out),
            "--quiet"]
    assert main(argv) == 0
    assert "Sampler: DPM++ 2M SDE," in read_parameters(out) and "Eta: 1" in read_parameters(out)


def test_cli_help_lists_every_sampler(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(SAMPLER_TABLE) in help_text


@pytest.mark.parametrize("name", sorted(SAMPLER_TABLE))
@pytest.mark.parametrize("karras", [False, True])
def test_png_parameters_round_trip_every_sampler(name, karras):
    request = GenerationRequest(prompt="p", sampler=name, karras=karras)
    settings = parse_parameters(format_parameters(request))
    assert (settings["sampler"], settings["karras"], settings["eta"]) == (name, karras, request.eta)


def test_newer_a1111_schedule_type_field_is_read():
    settings = parse_parameters("p\nSteps: 20, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 7, Seed: 1")
    assert (settings["sampler"], settings["karras"]) == ("dpmpp_2m_sde", True)


def test_a_request_carries_its_samplers_default_eta():
    for name, spec in SAMPLER_TABLE.items():
        assert GenerationRequest(sampler=name).eta == spec.default_eta
    assert GenerationRequest(sampler="euler_a", eta=0.25).eta == 0.25
    ddim = GenerationRequest(sampler="ddim")
    assert ddim.replace(sampler="euler_a").eta == 1.0  # another sampler brings its own default …
    assert ddim.replace(sampler="euler_a", eta=0.0).eta == 0.0  # … unless η is given
    assert ddim.replace(eta=0.5).replace(steps=3).eta == 0.5
    assert GenerationRequest.from_settings(GenerationRequest(sampler="ddpm").settings()).eta == 1.0


def test_validate_reads_the_table():
    with pytest.raises(RequestError, match="unknown sampler 'lms'; choose one of ddim, ddpm, euler_a"):
        validate(GenerationRequest(sampler="lms"))
    for name in SAMPLER_TABLE:
        validate(GenerationRequest(sampler=name, karras=SAMPLER_TABLE[name].supports_karras))


def test_ui_choices_come_from_the_table():
    from studio.ui import choices

    assert choices.SAMPLERS == {name: spec.display_name for name, spec in SAMPLER_TABLE.items()}
    assert choices.USES_ETA == {name for name, spec in SAMPLER_TABLE.items() if spec.uses_eta}
