"""The crash suite's workflows (autodiscovered: ``tests.chaos`` is an installed app)."""
