"""Sample files (b2diffurl/samples.py): round trip, validation, weights_only loading, subset."""

import os

import pytest
import torch

from b2diffurl.errors import SampleFileError
from b2diffurl.files import atomic_torch_save
from b2diffurl.paths import StagePaths
from b2diffurl.stage.sample_file import FORMAT_VERSION, META_KEYS, concatenate, load_samples, save_samples, subset

CALLS = []


def _side_effect(tag):
    CALLS.append(tag)
    return tag


class RunsCode:
    """Unpickling this calls _side_effect: what weights_only=True must refuse."""

    def __reduce__(self):
        return (_side_effect, ("unpickled",))


def make_record():
    """N=6 samples in 3 groups of K=2, s=3, latents [6, 4, 2, 4, 4]."""
    g = torch.Generator().manual_seed(0)
    meta = dict(num_steps=10, split_step=3, branch_point=7, num_branches=2, eta=1.0,
                guidance_scale=5.0, model="tiny", seed=42, stage=0, format_version=FORMAT_VERSION)
    assert set(meta) == set(META_KEYS)
    return {
        "prompts": ["p0", "p0", "p1", "p1", "p2", "p2"],
        "group_id": torch.tensor([0, 0, 1, 1, 2, 2]),
        "branch_id": torch.tensor([0, 1, 0, 1, 0, 1]),
        "timesteps": torch.tensor([[301, 201, 101]] * 6),
        "latents": torch.randn(6, 4, 2, 4, 4, generator=g),
        "log_probs": torch.randn(6, 3, generator=g),
        "meta": meta,
    }


def assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_round_trip(tmp_path):
    record = make_record()
    path = str(tmp_path / "sample.pkl")
    save_samples(record, path)
    loaded = load_samples(path)
    assert_same(loaded, record)
    assert loaded["prompts"] == ["p0", "p0", "p1", "p1", "p2", "p2"]


def test_expect_meta(tmp_path):
    path = str(tmp_path / "sample.pkl")
    save_samples(make_record(), path)
    assert load_samples(path, expect={"split_step": 3, "stage": 0})["meta"]["split_step"] == 3
    with pytest.raises(SampleFileError):
        load_samples(path, expect={"split_step": 4})


def test_missing_file(tmp_path):
    with pytest.raises(SampleFileError):
        load_samples(str(tmp_path / "nothing.pkl"))


def test_truncated_file(tmp_path):
    full, cut = tmp_path / "full.pkl", tmp_path / "cut.pkl"
    save_samples(make_record(), str(full))
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleFileError):
        load_samples(str(cut))


def test_not_a_torch_file(tmp_path):
    (tmp_path / "x.pkl").write_text("hello")
    with pytest.raises(SampleFileError):
        load_samples(str(tmp_path / "x.pkl"))


def _wrong_version(r): r["meta"]["format_version"] = FORMAT_VERSION + 1
def _short_log_probs(r): r["log_probs"] = r["log_probs"][:5]
def _short_group_id(r): r["group_id"] = r["group_id"][:5]
def _extra_prompt(r): r["prompts"].append("p3")
def _timesteps_wrong_s(r): r["timesteps"] = r["timesteps"][:, :2]
def _latents_wrong_s(r): r["latents"] = r["latents"][:, :3]
def _latents_4d(r): r["latents"] = r["latents"][:, :, 0]
def _group_negative(r): r["group_id"][5] = -1
def _group_with_two_prompts(r): r["prompts"][5] = "p0"
def _branch_out_of_range(r): r["branch_id"][5] = 2
def _meta_lacks_key(r): del r["meta"]["eta"]
def _no_timesteps(r): del r["timesteps"]


BROKEN = [_wrong_version, _short_log_probs, _short_group_id, _extra_prompt, _timesteps_wrong_s,
          _latents_wrong_s, _latents_4d, _group_negative, _group_with_two_prompts, _branch_out_of_range,
          _meta_lacks_key, _no_timesteps]


@pytest.mark.parametrize("breaks", BROKEN)
def test_invalid_record_is_refused_on_save_and_load(tmp_path, breaks):
    record = make_record()
    breaks(record)
    path = str(tmp_path / "sample.pkl")
    with pytest.raises(SampleFileError):
        save_samples(record, path)
    assert not os.path.exists(path)
    torch.save(record, path)  # written by something else: load must refuse it too
    with pytest.raises(SampleFileError):
        load_samples(path)


def test_arbitrary_python_object_is_refused(tmp_path):
    record = make_record()
    record["meta"]["model"] = RunsCode()  # otherwise a valid record
    path = str(tmp_path / "evil.pkl")
    torch.save(record, path)
    CALLS.clear()
    with pytest.raises(SampleFileError):
        load_samples(path)
    assert CALLS == []


def test_subset_keeps_order_shared_entries_and_extra_columns(tmp_path):
    record = make_record()
    adv, rew = torch.tensor([0.5, -0.7]), torch.tensor([0.3, 0.1])
    sub = subset(record, torch.tensor([4, 1]), advantages=adv, rewards=rew)
    assert sub["prompts"] == ["p2", "p0"]
    assert sub["group_id"].tolist() == [2, 0] and sub["branch_id"].tolist() == [0, 1]
    for key in ("timesteps", "latents", "log_probs"):
        assert torch.equal(sub[key][0], record[key][4]) and torch.equal(sub[key][1], record[key][1])
    assert sub["meta"] == record["meta"]
    assert sub["advantages"] is adv and sub["rewards"] is rew
    path = str(tmp_path / "sample_stage.pkl")
    save_samples(sub, path, selected=True)
    assert_same(load_samples(path, selected=True), sub)


def test_selected_requires_advantages_and_rewards(tmp_path):
    record = make_record()
    path = str(tmp_path / "sample.pkl")
    with pytest.raises(SampleFileError):
        save_samples(record, path, selected=True)
    save_samples(record, path)
    with pytest.raises(SampleFileError):
        load_samples(path, selected=True)
    only_adv = subset(record, torch.tensor([0, 1]), advantages=torch.zeros(2))
    with pytest.raises(SampleFileError):
        save_samples(only_adv, path, selected=True)
    short_rewards = subset(record, torch.tensor([0, 1]), advantages=torch.zeros(2), rewards=torch.zeros(1))
    with pytest.raises(SampleFileError):
        save_samples(short_rewards, path, selected=True)


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    path = str(tmp_path / "out.pkl")
    atomic_torch_save({"x": torch.arange(3)}, path)
    atomic_torch_save({"x": torch.arange(4)}, path)  # replaces
    assert os.listdir(tmp_path) == ["out.pkl"]
    assert torch.load(path, weights_only=True)["x"].tolist() == [0, 1, 2, 3]
    with pytest.raises(Exception):
        atomic_torch_save({"x": lambda: 0}, path)  # cannot be pickled
    assert os.listdir(tmp_path) == ["out.pkl"]
    assert torch.load(path, weights_only=True)["x"].tolist() == [0, 1, 2, 3]


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    from b2diffurl.files import atomic_write_json

    previous = os.umask(0o027)
    try:
        atomic_write_json({"a": 1}, str(tmp_path / "shared.json"))
        os.umask(0o022)
        atomic_torch_save([1], str(tmp_path / "out.pkl"))
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "shared.json").st_mode & 0o777 == 0o640  # not mkstemp's owner-only 0o600
    assert os.stat(tmp_path / "out.pkl").st_mode & 0o777 == 0o644


def test_atomic_save_creates_folder(tmp_path):
    path = tmp_path / "a" / "b" / "out.pkl"
    atomic_torch_save([1, 2], str(path))
    assert os.listdir(path.parent) == ["out.pkl"]


def test_shards_of_processes_join_into_one_record(tmp_path):
    record = make_record()
    shards = [subset(record, torch.tensor(rows)) for rows in ([0, 1, 4, 5], [2, 3])]  # groups 0, 2 and 1
    joined = concatenate(shards)
    order = torch.tensor([0, 1, 4, 5, 2, 3])
    assert_same(joined, subset(record, order))

    with pytest.raises(SampleFileError, match="distinct groups"):
        concatenate([shards[0], subset(record, torch.tensor([0, 1]))])  # group 0 twice
    other = subset(record, torch.tensor([2, 3]))
    other["meta"] = {**other["meta"], "seed": 7}
    with pytest.raises(SampleFileError, match="different settings"):
        concatenate([shards[0], other])


def test_stage_paths_find_every_shard_or_say_what_is_missing(tmp_path):
    paths = StagePaths(str(tmp_path / "stage0"))
    os.makedirs(paths.root)
    with pytest.raises(FileNotFoundError, match="no sample file"):
        paths.sample_shards()
    assert paths.shard(0, 1) == (paths.samples, paths.images)
    first, second, third = (paths.shard(rank, 3) for rank in range(3))
    assert first[0].endswith("sample.0-of-3.pkl") and third[1].endswith("images.2-of-3.pt")
    for samples_path, _ in (first, third):
        open(samples_path, "w").close()
    with pytest.raises(FileNotFoundError, match=r"lacks sample.1-of-3.pkl"):
        paths.sample_shards()
    open(second[0], "w").close()
    assert paths.sample_shards() == [first, second, third]
    open(paths.shard(0, 2)[0], "w").close()  # a leftover of a run with another process count
    with pytest.raises(FileNotFoundError, match=r"\[2, 3\] processes"):
        paths.sample_shards()
    open(paths.samples, "w").close()  # a one-process sample file is looked for first
    assert paths.sample_shards() == [(paths.samples, paths.images)]
