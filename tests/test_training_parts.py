import os
import signal

import pytest

from mmtl.training.signals import GracefulStop


def test_first_signal_sets_flag_second_exits() -> None:
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored
