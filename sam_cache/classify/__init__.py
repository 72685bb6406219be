"""The parts of `classify` (a class head on SAM's decoder tokens: which class, or organ, is the prompted
object?): `head` holds the model, `objects` the class of each object, `report` scores the head per prompt
strategy. The command that trains it is `commands.classify`."""
