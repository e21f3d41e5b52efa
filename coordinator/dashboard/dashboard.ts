document.body.textContent = 'loramesh dashboard';
