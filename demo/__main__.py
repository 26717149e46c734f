from demo.dataset import run

run()
