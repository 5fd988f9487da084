"""Images: inspect, pull, tag, build, list, remove."""

from __future__ import annotations

import json
import time

import pytest

from orchestrator.core.types import BuildSpec
from orchestrator.errors import (
    ContainerConflict,
    DockerError,
    ImageBuildFailed,
    ImageNotFound,
)
from tests.contract.harness import RUN_LABEL, Harness, TarEntry, make_tar
from tests.contract.scenarios import (
    BUILD_STEP,
    EXITS_0,
    FAILING_BUILD_STEP,
    GREEDY_BUILD_STEP,
    NO_NETWORK_BUILD_STEP,
    SLOW_BUILD_STEP,
    TEST_IMAGE,
    TEST_IMAGE_CMD,
    TEST_IMAGE_ENV,
    TRIGGER_STEP,
    Command,
)


def context(dockerfile: str, name: str = "Dockerfile") -> bytes:
    """A build context holding only the Dockerfile, under ``name``."""
    return make_tar(TarEntry(name, dockerfile.encode()))


GOOD_DOCKERFILE = f'FROM {TEST_IMAGE}\nRUN ["/bin/sh","-c","echo built > /built"]\n'


def build_spec(
    harness: Harness, dockerfile: str, what: str = "built", **fields: object
) -> BuildSpec:
    """A build of this test (labelled with its run), with ``fields`` overriding."""
    values: dict[str, object] = {
        "context_tar": context(dockerfile),
        "tag": harness.tag(what),
        "labels": harness.labels(),
        "network_mode": "none",
    }
    values.update(fields)
    return BuildSpec(**values)  # type: ignore[arg-type]


def test_inspect_the_test_image(harness: Harness) -> None:
    image = harness.engine.inspect_image(TEST_IMAGE)

    assert image.id.startswith("sha256:")
    assert TEST_IMAGE in image.tags
    assert image.cmd == TEST_IMAGE_CMD
    assert image.environment == TEST_IMAGE_ENV
    assert harness.engine.inspect_image(image.id).id == image.id


def test_a_missing_image_is_image_not_found(harness: Harness) -> None:
    engine = harness.engine
    missing = harness.tag("missing")

    with pytest.raises(ImageNotFound):
        engine.inspect_image(missing)
    with pytest.raises(ImageNotFound):
        engine.tag_image(missing, harness.tag("other"))
    with pytest.raises(ImageNotFound):
        engine.remove_image(missing)


@pytest.mark.parametrize("which", ["unknown", "local-only"])
def test_pull_of_an_image_no_registry_has_is_image_not_found(harness: Harness, which: str) -> None:
    """A pull always asks the registry, even for an image present locally."""
    ref = harness.tag("missing") if which == "unknown" else TEST_IMAGE

    with pytest.raises(ImageNotFound) as info:
        harness.engine.pull_image(ref)

    assert ref in str(info.value)
    assert "cannot be pulled" in str(info.value)


def test_pull_of_an_invalid_reference_is_refused(harness: Harness) -> None:
    with pytest.raises(DockerError) as info:
        harness.engine.pull_image("Not/A Valid:Reference")

    assert not isinstance(info.value, ImageNotFound)


def test_tag_and_untag(harness: Harness) -> None:
    engine = harness.engine
    base = engine.inspect_image(TEST_IMAGE)
    tag = harness.tag("tagged")

    engine.tag_image(TEST_IMAGE, tag)

    tagged = engine.inspect_image(tag)
    assert tagged.id == base.id
    assert {tag, TEST_IMAGE} <= set(tagged.tags)
    assert tag in engine.inspect_image(TEST_IMAGE).tags

    engine.remove_image(tag)  # only the tag goes: the image has another

    with pytest.raises(ImageNotFound):
        engine.inspect_image(tag)
    assert engine.inspect_image(TEST_IMAGE).id == base.id
    assert tag not in engine.inspect_image(TEST_IMAGE).tags


def test_an_invalid_tag_is_refused(harness: Harness) -> None:
    with pytest.raises(DockerError) as info:
        harness.engine.tag_image(TEST_IMAGE, f"{harness.prefix}/Upper:1")

    assert not isinstance(info.value, ImageNotFound)


def test_a_tag_in_use_can_go_while_the_image_keeps_another(harness: Harness) -> None:
    engine = harness.engine
    tag = harness.tag("in-use")
    engine.tag_image(TEST_IMAGE, tag)
    engine.create_container(harness.spec(EXITS_0, image=tag))

    engine.remove_image(tag)

    with pytest.raises(ImageNotFound):
        engine.inspect_image(tag)


def test_build_from_a_tar_context(harness: Harness) -> None:
    engine = harness.engine
    harness.learn(BUILD_STEP)
    spec = build_spec(harness, GOOD_DOCKERFILE, labels=harness.labels(kind="contract-build"))

    built = engine.build_image(spec)

    assert spec.tag in built.tags
    assert engine.inspect_image(spec.tag).id == built.id
    assert dict(built.labels) == dict(spec.labels)
    base = engine.inspect_image(TEST_IMAGE)
    assert built.id != base.id
    assert built.cmd == base.cmd  # inherited from the base image
    assert built.environment == base.environment


def test_list_images_by_label(harness: Harness) -> None:
    engine = harness.engine
    harness.learn(BUILD_STEP)
    built = engine.build_image(
        build_spec(harness, GOOD_DOCKERFILE, labels=harness.labels(kind="contract-build"))
    )
    run = f"{RUN_LABEL}={harness.prefix}"

    assert [i.id for i in engine.list_images([run])] == [built.id]
    assert [i.id for i in engine.list_images([run, "kind=contract-build"])] == [built.id]
    assert [i.id for i in engine.list_images([run, "kind"])] == [built.id]
    assert engine.list_images([run, "kind=other"]) == []


def test_containers_carry_their_image_labels(harness: Harness) -> None:
    engine = harness.engine
    dockerfile = f"FROM {TEST_IMAGE}\nLABEL from=image shared=image\n"
    built = engine.build_image(build_spec(harness, dockerfile))
    labels = harness.labels(shared="container")

    created = engine.create_container(harness.spec(EXITS_0, image=built.tags[0], labels=labels))

    assert dict(created.labels) == {**labels, "from": "image"}
    filters = [f"{RUN_LABEL}={harness.prefix}", "from=image", "shared=container"]
    assert [c.id for c in engine.list_containers(filters)] == [created.id]


def test_a_failing_step_fails_the_build(harness: Harness) -> None:
    engine = harness.engine
    harness.learn(FAILING_BUILD_STEP)
    dockerfile = f'FROM {TEST_IMAGE}\nRUN ["/bin/sh","-c","echo failing; exit 3"]\n'
    spec = build_spec(harness, dockerfile, "failing")

    with pytest.raises(ImageBuildFailed) as info:
        engine.build_image(spec)

    message = str(info.value)
    assert spec.tag in message
    assert "returned a non-zero code: 3" in message
    assert "failing" in message.split("returned a non-zero code: 3", 1)[1]  # the log's tail
    with pytest.raises(ImageNotFound):
        engine.inspect_image(spec.tag)


@pytest.mark.parametrize(
    ("dockerfile", "name"),
    [
        (GOOD_DOCKERFILE, "Other.dockerfile"),
        ("FROM contract-missing-base/none:1\n", "Dockerfile"),
        (f"FROM {TEST_IMAGE}\nFROMM nothing\n", "Dockerfile"),
    ],
    ids=["no-dockerfile", "unknown-base", "parse-error"],
)
def test_a_build_refused_before_any_step_is_a_failed_build(
    harness: Harness, dockerfile: str, name: str
) -> None:
    spec = build_spec(harness, dockerfile, context_tar=context(dockerfile, name))

    with pytest.raises(ImageBuildFailed):
        harness.engine.build_image(spec)


def test_an_image_in_use_cannot_be_removed(harness: Harness) -> None:
    engine = harness.engine
    built = engine.build_image(build_spec(harness, f"FROM {TEST_IMAGE}\nLABEL x=y\n"))
    engine.create_container(harness.spec(EXITS_0, image=built.tags[0]))

    with pytest.raises(DockerError) as info:
        engine.remove_image(built.tags[0])

    assert not isinstance(info.value, ContainerConflict | ImageNotFound)
    assert engine.inspect_image(built.id).id == built.id


def test_removing_by_id_an_image_with_several_tags_is_refused(harness: Harness) -> None:
    engine = harness.engine
    built = engine.build_image(build_spec(harness, f"FROM {TEST_IMAGE}\nLABEL x=y\n"))
    engine.tag_image(built.id, harness.tag("second"))

    with pytest.raises(DockerError) as info:
        engine.remove_image(built.id)
    assert not isinstance(info.value, ContainerConflict | ImageNotFound)

    engine.remove_image(harness.tag("second"))
    engine.remove_image(built.id)
    with pytest.raises(ImageNotFound):
        engine.inspect_image(built.id)


# -- containment of builds: what a RUN step gets, how long a build may run ----------------


def exec_form(command: Command) -> str:
    """``command`` as an exec-form ``RUN`` line (so the argv is exactly the command's)."""
    return "RUN " + json.dumps(list(command.argv))


def test_a_container_knows_the_id_of_its_image_after_the_tag_moved(harness: Harness) -> None:
    engine = harness.engine
    tag = harness.tag("moving")
    engine.tag_image(TEST_IMAGE, tag)
    created = engine.create_container(harness.spec(EXITS_0, image=tag))
    first = engine.inspect_image(tag).id
    moved = build_spec(harness, f"FROM {TEST_IMAGE}\nLABEL moved=yes\n", tag=tag)
    built = engine.build_image(moved)

    assert built.id != first
    assert engine.inspect_container(created.id).image_id == first
    [listed] = [c for c in engine.list_containers() if c.id == created.id]
    assert listed.image_id == first
    engine.remove_container(created.id)


def test_onbuild_triggers_are_inspected_and_run_in_the_builds_from_the_image(
    harness: Harness,
) -> None:
    engine = harness.engine
    harness.learn(TRIGGER_STEP)
    trigger = 'RUN ["/bin/sh","-c","echo triggered > /triggered"]'
    base = engine.build_image(
        build_spec(harness, f"FROM {TEST_IMAGE}\nONBUILD {trigger}\n", "base")
    )

    assert base.onbuild == (trigger,)
    child = engine.build_image(build_spec(harness, f"FROM {base.tags[0]}\n", "child"))
    assert child.onbuild == ()  # the triggers ran, in this build


def test_a_build_past_its_time_limit_is_stopped_and_tags_nothing(harness: Harness) -> None:
    engine = harness.engine
    harness.learn(SLOW_BUILD_STEP)
    spec = build_spec(
        harness, f"FROM {TEST_IMAGE}\n{exec_form(SLOW_BUILD_STEP)}\n", timeout_seconds=2
    )
    started = time.monotonic()

    with pytest.raises(ImageBuildFailed) as info:
        engine.build_image(spec)

    assert time.monotonic() - started < 10  # the step sleeps 30 s: it was cut
    assert spec.tag in str(info.value)
    assert "time limit" in str(info.value)
    with pytest.raises(ImageNotFound):
        engine.inspect_image(spec.tag)


def test_a_run_step_over_the_builds_memory_is_killed(harness: Harness) -> None:
    harness.learn(GREEDY_BUILD_STEP)
    spec = build_spec(harness, f"FROM {TEST_IMAGE}\n{exec_form(GREEDY_BUILD_STEP)}\n", memory_mb=16)

    with pytest.raises(ImageBuildFailed) as info:
        harness.engine.build_image(spec)

    assert "returned a non-zero code: 137" in str(info.value)


def test_run_steps_without_a_network_have_only_loopback_and_take_a_cpu_quota(
    harness: Harness,
) -> None:
    harness.learn(NO_NETWORK_BUILD_STEP)
    spec = build_spec(
        harness, f"FROM {TEST_IMAGE}\n{exec_form(NO_NETWORK_BUILD_STEP)}\n", cpu_limit=0.5
    )

    built = harness.engine.build_image(spec)

    assert spec.tag in built.tags


def test_from_takes_global_args_and_earlier_stages(harness: Harness) -> None:
    dockerfile = (
        "ARG BASE=contract-missing-base/none:1\nFROM ${BASE} AS first\nLABEL stage=first\n"
        "FROM first\nLABEL second=yes\n"
    )
    spec = build_spec(harness, dockerfile, build_args={"BASE": TEST_IMAGE})

    built = harness.engine.build_image(spec)

    assert built.labels["stage"] == "first"
    assert built.labels["second"] == "yes"


def test_a_failed_build_leaves_no_image_of_its_steps(harness: Harness) -> None:
    engine = harness.engine
    harness.learn(BUILD_STEP)
    harness.learn(FAILING_BUILD_STEP)
    dockerfile = (
        f"FROM {TEST_IMAGE}\nLABEL {RUN_LABEL}={harness.prefix}\n{exec_form(BUILD_STEP)}\n"
        f"{exec_form(FAILING_BUILD_STEP)}\n"
    )

    with pytest.raises(ImageBuildFailed):
        engine.build_image(build_spec(harness, dockerfile, "failing"))

    assert engine.list_images([f"{RUN_LABEL}={harness.prefix}"]) == []
    assert engine.inspect_image(TEST_IMAGE).id  # the base image stays


def test_a_multi_stage_build_leaves_only_its_image(harness: Harness) -> None:
    engine = harness.engine
    harness.learn(BUILD_STEP)
    dockerfile = (
        f"FROM {TEST_IMAGE} AS first\nLABEL {RUN_LABEL}={harness.prefix} stage=first\n"
        f"{exec_form(BUILD_STEP)}\nFROM {TEST_IMAGE}\nLABEL final=yes\n"
    )

    built = engine.build_image(build_spec(harness, dockerfile))

    assert [i.id for i in engine.list_images([f"{RUN_LABEL}={harness.prefix}"])] == [built.id]
