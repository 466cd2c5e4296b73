"""Policy files: the model, strict loading with located errors, routes, dates, cases."""
