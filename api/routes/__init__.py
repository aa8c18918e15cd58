"""One router per resource; handlers are thin and delegate to core/."""
