"""A clock the test moves by hand (`clock.now += 30`), for code that takes `clock=` (a () -> epoch seconds)."""


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now
