"""The methods: name -> class (the interface of models/method.py). The one registry that config,
main, runs, retrieval, report and the run scripts read; `--model` takes its names."""
from models.agah import AGAH
from models.dadh import DADH
from models.dcmh import DCMH
from models.ssah import SSAH

METHODS = {method.NAME: method for method in (DADH, AGAH, DCMH, SSAH)}
