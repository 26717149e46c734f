"""The demo data set's painter: synthetic street scenes with exact labels, written in a data set's layout.

Needs only numpy and Pillow. `python -m demo` (or `python -m training.demo_data`) writes a set; the training code
reads it as it reads the real data set.
"""
