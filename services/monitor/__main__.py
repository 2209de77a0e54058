from services.monitor.cli import monitor

monitor()
