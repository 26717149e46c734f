"""`python -m training.demo_data`: the demo data set's painter (the `demo` package), under its historical name."""

from demo.dataset import *  # noqa: F401,F403  (make_demo_dataset, ensure_demo_dataset, ...)
from demo.dataset import run

if __name__ == "__main__":
    run()
