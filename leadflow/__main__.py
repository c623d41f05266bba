from leadflow.cli import app

app(prog_name="leadflow")
