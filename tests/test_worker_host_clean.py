"""The worker shell's Clean of an attempt that never started a process (no
sandbox slot was free, say): it tidies the folder instead of failing."""
from uds.worker import attempts as core
from uds.worker.host import AttemptHost


class _Now:
    """Runs what the host hands to its helper threads at once."""

    def submit(self, function, *args):
        function(*args)


def test_clean_of_an_attempt_that_never_started_removes_its_folder(tmp_path):
    host = AttemptHost.__new__(AttemptHost)
    host.processes, host.outputs, host.work_root, host.helpers = {}, {}, tmp_path, _Now()
    key = core.AttemptKey(bytes(16), 3, 1)
    (tmp_path / key.name / "out").mkdir(parents=True)
    host.clean(core.Clean(key))
    assert not (tmp_path / key.name).exists()
