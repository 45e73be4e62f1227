"""The shared progress bar: live fields need starting values, because rich renders the bar from its
own thread, possibly before the first update (the quickstart demo once died there with KeyError)."""

import pytest

from hwnas.core.progress import progress_bar


def test_fields_without_starting_values_are_refused():
    with pytest.raises(ValueError, match=r"fields \['loss'\] have no starting value"):
        with progress_bar("x", 3, fields="loss {task.fields[loss]:.3f}"):
            pass


def test_fields_render_before_the_first_update():
    # no advance() at all: the bar's last render (on exit, in this thread) must find the starting values
    with progress_bar("x", 2, enabled=True, fields="loss {task.fields[loss]:.3f}  {task.fields[tps]:,.0f} tok/s",
                      initial={"loss": float("nan"), "tps": 0.0}):
        pass
